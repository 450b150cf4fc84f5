//! What a run reports: one JSON object per optimiser step in `metrics.jsonl` (run folder),
//! and a progress bar (loss, lr, views/s, ETA) on the terminal.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// File name of the per-step metrics in the run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimiser steps done, this one included (1-based).
    pub step: u64,
    /// Epoch of this step (0-based).
    pub epoch: u64,
    /// Relation loss L_QK + L_VV, mean over the step's micro-batches.
    pub loss: f64,
    /// The QK term L_QK.
    pub loss_qk: f64,
    /// The VV term L_VV.
    pub loss_vv: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Views per second over this step (waiting for data included).
    pub views_per_s: f64,
    /// Seconds this step waited for the loader.
    pub data_wait_s: f64,
}

/// Appends [`StepMetrics`] lines to `metrics.jsonl`, flushed after every line.
pub struct MetricsLog {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl MetricsLog {
    /// Opens `dir/metrics.jsonl`. A fresh run (`resume_step` = `None`) starts it empty; a
    /// resumed run keeps the lines of steps up to `resume_step` and drops any later ones
    /// (written after the checkpoint it resumes from).
    pub fn open(dir: &Path, resume_step: Option<u64>) -> std::io::Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let kept = match resume_step {
            Some(step) if path.exists() => read_metrics(&path)?
                .into_iter()
                .filter(|m| m.step <= step)
                .collect(),
            _ => Vec::new(),
        };
        let mut log = MetricsLog {
            writer: BufWriter::new(File::create(&path)?),
            path,
        };
        for m in &kept {
            log.write(m)?;
        }
        Ok(log)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and flushes it.
    pub fn write(&mut self, metrics: &StepMetrics) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.writer, metrics)?;
        self.writer.write_all(b"\n")?;
        self.writer.flush()
    }
}

/// Reads every line of a `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<StepMetrics>> {
    BufReader::new(File::open(path)?)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|line| {
            serde_json::from_str(&line?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

/// The terminal progress bar of a run (hidden when stderr is not a terminal, or on request).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar over `total` steps, `done` of them already done (a resumed run).
    pub fn new(total: u64, done: u64, visible: bool) -> Progress {
        let bar = if visible {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_position(done);
        bar.reset_eta();
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// Shows a finished step.
    pub fn step(&self, m: &StepMetrics) {
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} views/s",
            m.loss, m.lr, m.views_per_s
        ));
        self.bar.set_position(m.step);
    }

    /// Prints a line above the bar (checkpoints, warnings).
    pub fn println(&self, line: impl AsRef<str>) {
        self.bar.println(line);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
