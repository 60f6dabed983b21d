//! A deterministic generator of city-scale bundles (`sekimori dev generate`), for
//! benchmarks and load tests: sections, systems in all three zones, assets of every tier
//! with `my_number` ones, named, section, contract and selector grants, contracts and
//! time windows. Every bundle it writes passes `policy check`.

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[arg(long, default_value_t = 200)]
    pub sections: usize,
    #[arg(long, default_value_t = 500)]
    pub systems: usize,
    #[arg(long, default_value_t = 100_000)]
    pub assets: usize,
    #[arg(long, default_value_t = 20_000)]
    pub staff: usize,
    #[arg(long, default_value_t = 50_000)]
    pub grants: usize,
    #[arg(long, default_value_t = 300)]
    pub contracts: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    generate(args).with_context(|| format!("writing the bundle to `{}`", args.out.display()))?;
    println!(
        "generated {} sections, {} systems, {} assets, {} grants, {} contracts in {}",
        args.sections,
        args.systems,
        args.assets,
        args.grants,
        args.contracts,
        args.out.display()
    );
    Ok(())
}

struct AssetInfo {
    owner: usize,
    secret: bool,
    my_number: bool,
}

/// Writes the bundle. Sizes are clamped to at least one of each kind.
pub fn generate(args: &GenerateArgs) -> std::io::Result<()> {
    let n_sections = args.sections.max(1);
    let n_systems = args.systems.max(n_sections);
    let n_staff = args.staff.max(n_sections * 2);
    let mut rng = SmallRng::seed_from_u64(args.seed);
    let out = &args.out;
    std::fs::create_dir_all(out.join("assets"))?;
    std::fs::create_dir_all(out.join("grants"))?;
    let section = |i: usize| format!("s{i:03}");
    let chief = |i: usize| format!("c{i:03}");
    // Staff e00000.. are spread over sections round robin.
    let staff_of = |sec: usize, k: usize| format!("e{:05}", (k * n_sections + sec) % n_staff);

    let mut org = String::from("scheme: classic\ncity: 生成市\nciso: e-ciso\ndepartments:\n");
    for d in 0..n_sections.div_ceil(10) {
        let _ = writeln!(org, "  - id: d{d:02}\n    name: 第{d}部\n    sections:");
        for s in (d * 10)..((d + 1) * 10).min(n_sections) {
            let _ = writeln!(
                org,
                "      - {{ id: {}, name: 第{s}課, chief: {} }}",
                section(s),
                chief(s)
            );
        }
    }
    std::fs::write(out.join("organization.yaml"), org)?;

    // Systems: system j belongs to section j % n; every 5th is in the mynumber zone,
    // every 7th in internet, the rest lgwan.
    let zone = |j: usize| {
        if j % 5 == 0 {
            "mynumber"
        } else if j % 7 == 0 {
            "internet"
        } else {
            "lgwan"
        }
    };
    let mut sys = String::from("systems:\n");
    for j in 0..n_systems {
        let _ = writeln!(
            sys,
            "  - {{ id: y{j:04}, owner: {}, zone: {}, identity: \"spiffe://gen.city/y{j:04}\" }}",
            section(j % n_sections),
            zone(j)
        );
    }
    std::fs::write(out.join("systems.yaml"), sys)?;
    let systems_of =
        |s: usize| -> Vec<usize> { (0..n_systems).filter(|j| j % n_sections == s).collect() };
    let section_systems: Vec<Vec<usize>> = (0..n_sections).map(systems_of).collect();
    let mynumber_systems: Vec<usize> = (0..n_systems).filter(|j| zone(*j) == "mynumber").collect();

    let mut contracts = String::from("contracts:\n");
    let mut contract_sections = Vec::new();
    for c in 0..args.contracts {
        let s = c % n_sections;
        contract_sections.push(s);
        let _ = writeln!(
            contracts,
            "  - {{ id: k{c:04}, contractor: 委託先{c}, sections: [{}], valid_from: 2026-04-01, valid_until: 2027-04-01 }}",
            section(s)
        );
    }
    std::fs::write(out.join("contracts.yaml"), contracts)?;

    let mut assets: Vec<AssetInfo> = Vec::with_capacity(args.assets);
    let mut files: Vec<String> = vec![String::from("assets:\n"); n_sections];
    for k in 0..args.assets {
        let owner = k % n_sections;
        let roll: u32 = rng.gen_range(0..100);
        let (conf, my_number) = match roll {
            0..=19 => ("1", false),
            20..=69 => ("2", false),
            70..=94 => ("3", false),
            _ => ("3", true),
        };
        let holder = if my_number {
            mynumber_systems[k % mynumber_systems.len().max(1)]
        } else {
            let own = &section_systems[owner];
            own[k % own.len().max(1)]
        };
        let integ = if rng.gen_bool(0.4) { "2" } else { "1" };
        let avail = if rng.gen_bool(0.3) { "2" } else { "1" };
        let Some(file) = files.get_mut(owner) else {
            continue;
        };
        let _ = writeln!(
            file,
            "  - {{ id: a{k:06}, name: 資産{k}, owner: {}, systems: [y{holder:04}], confidentiality: \"{conf}\", integrity: \"{integ}\", availability: \"{avail}\", my_number: {my_number}, review_by: 2027-03-31 }}",
            section(owner)
        );
        assets.push(AssetInfo {
            owner,
            secret: conf == "3",
            my_number,
        });
    }
    for (s, text) in files.iter().enumerate() {
        std::fs::write(
            out.join("assets").join(format!("{}.yaml", section(s))),
            text,
        )?;
    }

    let by_owner: Vec<Vec<usize>> = {
        let mut v = vec![Vec::new(); n_sections];
        for (i, a) in assets.iter().enumerate() {
            if let Some(list) = v.get_mut(a.owner) {
                list.push(i);
            }
        }
        v
    };
    let mut files: Vec<String> = vec![String::from("grants:\n"); n_sections];
    for g in 0..args.grants {
        let s = g % n_sections;
        let pool = &by_owner[s];
        if pool.is_empty() {
            continue;
        }
        let kind: u32 = rng.gen_range(0..100);
        let from = if g % 10 == 0 {
            "2026-10-01"
        } else {
            "2026-04-01"
        };
        let picks: Vec<usize> = (0..rng.gen_range(1..=4))
            .map(|_| pool[rng.gen_range(0..pool.len())])
            .collect();
        let mut picked: Vec<usize> = picks;
        picked.sort_unstable();
        picked.dedup();
        let any_secret = picked.iter().any(|&a| assets[a].secret);
        let any_mn = picked.iter().any(|&a| assets[a].my_number);
        let (subjects, actions, assets_yaml) = if kind < 60 || (kind < 85 && any_secret) {
            let users: Vec<String> = (0..rng.gen_range(1..=3))
                .map(|k| staff_of(s, rng.gen_range(0..50) + k))
                .collect();
            (
                format!("{{ users: [{}] }}", users.join(", ")),
                if any_mn {
                    "[read, update]"
                } else {
                    "[read, update, print]"
                },
                list(&picked),
            )
        } else if kind < 85 {
            (
                format!("{{ sections: [{}] }}", section((s + 1) % n_sections)),
                "[read, print]",
                list(&picked),
            )
        } else if kind < 95 && !contract_sections.is_empty() && !any_mn {
            // A contract of this section, if there is one.
            match contract_sections.iter().position(|cs| *cs == s) {
                Some(c) => (
                    format!("{{ contracts: [k{c:04}] }}"),
                    if any_secret {
                        "[read]"
                    } else {
                        "[read, update, print]"
                    },
                    list(&picked),
                ),
                None => (
                    format!("{{ users: [{}] }}", staff_of(s, 1)),
                    "[read]",
                    list(&picked),
                ),
            }
        } else {
            (
                format!("{{ sections: [{}] }}", section((s + 2) % n_sections)),
                "[read]",
                format!(
                    "{{ select: {{ owner: {}, max_confidentiality: \"2\" }} }}",
                    section(s)
                ),
            )
        };
        let purposes = if any_mn && !assets_yaml.contains("select") {
            ", purposes: [jimu-a, jimu-b]"
        } else {
            ""
        };
        let Some(file) = files.get_mut(s) else {
            continue;
        };
        let _ = writeln!(
            file,
            "  - {{ id: g{g:06}, subjects: {subjects}, assets: {assets_yaml}, actions: {actions}{purposes}, valid_from: {from}, valid_until: 2027-04-01, approved_by: {} }}",
            chief(s)
        );
    }
    for (s, text) in files.iter().enumerate() {
        std::fs::write(
            out.join("grants").join(format!("{}.yaml", section(s))),
            text,
        )?;
    }
    Ok(())
}

fn list(ids: &[usize]) -> String {
    let v: Vec<String> = ids.iter().map(|a| format!("a{a:06}")).collect();
    format!("[{}]", v.join(", "))
}

/// A small generated bundle in `dir`, for tests.
pub fn small(dir: &Path, seed: u64) -> std::io::Result<()> {
    generate(&GenerateArgs {
        sections: 12,
        systems: 30,
        assets: 600,
        staff: 200,
        grants: 300,
        contracts: 6,
        seed,
        out: dir.to_path_buf(),
    })
}
