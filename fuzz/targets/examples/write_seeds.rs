//! Writes every target's seed corpus to `<dir>/<target>/` (`fuzz/seed.sh` runs it with
//! `fuzz/corpus`). Files already there are kept: a campaign's corpus only grows.

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os().nth(1).map(std::path::PathBuf::from).unwrap_or_else(|| "fuzz/corpus".into());
    for target in cxb_fuzz_targets::TARGETS {
        let out = dir.join(target.name);
        std::fs::create_dir_all(&out)?;
        let seeds = cxb_fuzz_targets::seeds::seeds(target.name);
        for (name, bytes) in &seeds {
            std::fs::write(out.join(format!("seed-{name}")), bytes)?;
        }
        println!("{:<20} {:>3} seeds", target.name, seeds.len());
    }
    Ok(())
}
