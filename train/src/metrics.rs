//! What a run reports: one JSON object per optimiser step in `metrics.jsonl` (run folder),
//! and a progress bar (loss, lr, views/s, ETA) on the terminal.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tinymim_formats::atomic::write_file;

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
    /// (written after the checkpoint it resumes from, and about to be run again) and a line
    /// torn by the crash. The kept lines are written to a new file that replaces the old one
    /// atomically, so a crash while resuming loses nothing; later lines are appended.
    pub fn open(dir: &Path, resume_step: Option<u64>) -> std::io::Result<MetricsLog> {
        let path = dir.join(METRICS_FILE);
        let kept: Vec<StepMetrics> = match resume_step {
            Some(step) if path.exists() => read_metrics(&path)?
                .into_iter()
                .filter(|m| m.step <= step)
                .collect(),
            _ => Vec::new(),
        };
        let mut text = Vec::new();
        for m in &kept {
            serde_json::to_writer(&mut text, m)?;
            text.push(b'\n');
        }
        write_file(&path, &text).map_err(|e| e.source)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(MetricsLog {
            writer: BufWriter::new(file),
            path,
        })
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

/// Reads every line of a `metrics.jsonl`. A last line without its newline is one a crash cut
/// short and is left out; every complete line must parse.
pub fn read_metrics(path: &Path) -> std::io::Result<Vec<StepMetrics>> {
    let text = std::fs::read_to_string(path)?;
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64) -> StepMetrics {
        StepMetrics {
            step,
            epoch: 0,
            loss: 1.0 / step as f64,
            loss_qk: 0.0,
            loss_vv: 0.0,
            lr: 1e-3,
            grad_norm: 1.0,
            views_per_s: 10.0,
            data_wait_s: 0.0,
        }
    }

    #[test]
    fn a_resume_keeps_each_step_up_to_the_checkpoint_once_and_drops_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        for s in 1..=4 {
            log.write(&step(s)).unwrap();
        }
        drop(log);
        // The crash cut step 5's line short.
        let path = dir.path().join(METRICS_FILE);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(br#"{"step":5,"epoch":0,"lo"#);
        std::fs::write(&path, text).unwrap();

        let mut log = MetricsLog::open(dir.path(), Some(2)).unwrap();
        for s in 3..=5 {
            log.write(&step(s)).unwrap();
        }
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(steps, [1, 2, 3, 4, 5]);
        assert_eq!(read_metrics(&path).unwrap()[2], step(3));
    }

    #[test]
    fn a_fresh_run_starts_the_log_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(METRICS_FILE), b"old\n").unwrap();
        let mut log = MetricsLog::open(dir.path(), None).unwrap();
        log.write(&step(1)).unwrap();
        assert_eq!(read_metrics(log.path()).unwrap(), [step(1)]);
    }
}
