//! `train`: phase two of tinymim. See `train --help`.

mod cli;

use clap::Parser;

use cli::{Cli, Command};

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
            println!("{report}");
        }
        None => {
            let config = cli.train.config()?;
            if config.progress {
                eprintln!(
                    "train: device {}, {:?} products",
                    tinymim_train::device::describe(&config.device),
                    config.precision
                );
            }
            let summary = tinymim_train::run::train(&config)?;
            println!("{summary}");
        }
    }
    Ok(())
}
