//! `train`: phase two of tinymim. See `train --help`.

#![forbid(unsafe_code)]

mod bench_cli;
mod cli;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Command};
use tinymim_train::dist::World;

fn main() {
    let cli = Cli::parse();
    tinymim_train::heap::keep_freed_memory();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// Runs the requested action, printing its summary line.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Probe(args)) => {
            let report = tinymim_train::probe::probe(&args.config()?)?;
            write_json(args.json.as_deref(), &report)?;
            println!("{report}");
        }
        Some(Command::Bench(args)) => crate::bench_cli::run(&args)?,
        Some(Command::Eval(args)) => {
            let report = tinymim_train::eval::evaluate(&args.config()?)?;
            write_json(args.json.as_deref(), &report)?;
            println!("{report}");
        }
        None => {
            // The launcher's variables first: a malformed RANK is refused before any work.
            let launch = tinymim_formats::launch::Launch::from_env()?;
            let config = cli.train.config()?;
            let timeout = std::time::Duration::from_secs(cli.train.collective_timeout);
            let world = World::join(&launch, &config.device, timeout)?;
            if config.progress && world.is_lead() {
                eprintln!(
                    "train: device {}, {:?} products, {}",
                    tinymim_train::device::describe(&config.device),
                    config.precision,
                    world.describe()
                );
            }
            let prepared = tinymim_train::run::Prepared::new(&config)?;
            if let (Some(note), true) = (prepared.batch_note(), world.is_lead()) {
                eprintln!("{note}");
            }
            let summary = tinymim_train::run::train_in(&config, &prepared, &world)?;
            if world.is_lead() {
                println!("{summary}");
            }
        }
    }
    Ok(())
}

/// Writes `report` as JSON to `path`, when given.
fn write_json(
    path: Option<&std::path::Path>,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        tinymim_formats::atomic::write_file(path, &serde_json::to_vec_pretty(report)?)
            .context("cannot write the report")?;
    }
    Ok(())
}
