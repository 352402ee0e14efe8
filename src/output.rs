//! What a command tells a person or a machine on stdout: its result lines as text, or, with
//! `--output json`, one JSON object at the end, whatever the outcome.
//!
//! Provisioning scripts (a custom-script extension's output, a Terraform `null_resource`, a CI
//! job) want the result without parsing prose: the document has a `schema_version`, the command,
//! the exit code and its meaning, the error when there is one, what was done, the agent (name,
//! id, pool, version) and, for `status`, `doctor` and `prune`, their whole report. Logs stay on
//! stderr either way. Commands write through an [`Out`] they are handed; `main` asks it for the
//! document once the command has ended.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::cli::OutputFormat;
use crate::error::Error;
use crate::state::Saved;

/// Changes when a field changes meaning or goes; new fields do not change it.
pub const SCHEMA_VERSION: u32 = 1;

/// The commands whose results a machine reads; the others print data of their own (`token`,
/// `completions`) or run until stopped (`run`, `watch`).
pub const JSON_COMMANDS: &[&str] = &[
    "install",
    "reconcile",
    "remove",
    "status",
    "doctor",
    "prune",
];

/// The agent a command acted on, from root's saved settings.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentRef {
    pub name: String,
    pub id: u64,
    pub pool: String,
    pub pool_id: u64,
    /// A deployment group's or environment's agent: which (`kind`, `project`, `name`, `id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::scope::GroupRef>,
    pub organization: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub agent_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl From<&Saved> for AgentRef {
    fn from(s: &Saved) -> Self {
        Self {
            name: s.agent_name.clone(),
            id: s.agent_id,
            pool: s.pool.clone(),
            pool_id: s.pool_id,
            group: s.group.clone(),
            organization: s.url.clone(),
            version: s.agent_version.clone(),
            agent_dir: s.agent_dir.clone(),
            service: s.service_unit.clone(),
        }
    }
}

/// What a command did: the text it shows, and the agent it acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub text: String,
    pub agent: Option<AgentRef>,
    /// `install`: the steps carried out, or (a dry run) the steps it would carry out, in the
    /// dry run's words.
    pub steps: Option<Vec<String>>,
}

impl Outcome {
    pub fn new(text: impl Into<String>, agent: Option<AgentRef>) -> Self {
        Self {
            text: text.into(),
            agent,
            steps: None,
        }
    }

    /// With the steps planned or carried out.
    pub fn with_steps(mut self, steps: &[impl std::fmt::Display]) -> Self {
        self.steps = Some(steps.iter().map(ToString::to_string).collect());
        self
    }
}

/// A dry run's text: its header, then the steps numbered, or `nothing` when there are none.
pub fn dry_run_text(header: &str, steps: &[impl std::fmt::Display], nothing: &str) -> String {
    let mut out = format!("dry run: nothing was changed\n{header}\n");
    if steps.is_empty() {
        out.push_str(nothing);
        out.push('\n');
    } else {
        out.push_str("steps:\n");
        for (i, step) in steps.iter().enumerate() {
            out.push_str(&format!("  {}. {step}\n", i + 1));
        }
    }
    out
}

/// The one JSON object of `--output json`.
#[derive(Debug, Serialize)]
pub struct Document {
    pub schema_version: u32,
    pub command: String,
    pub ok: bool,
    pub exit_code: u8,
    /// What the exit code means (README, "Exit codes").
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What was done, in the words the text output uses.
    pub summary: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRef>,
    /// `install`: the steps carried out in order (a dry run: the steps it would carry out), in
    /// the words of `--dry-run`; `[]` when nothing needed doing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<String>>,
    /// `status`, `doctor` and `prune`: their report, as their `--json` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Recorded {
    summary: Vec<String>,
    agent: Option<AgentRef>,
    steps: Option<Vec<String>>,
    report: Option<serde_json::Value>,
}

/// Where a command's result goes: printed at once as text, or kept for the document.
#[derive(Debug, Clone)]
pub struct Out {
    json: bool,
    recorded: Arc<Mutex<Recorded>>,
}

impl Out {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            json: format == OutputFormat::Json,
            recorded: Arc::default(),
        }
    }

    /// Text on stdout (the commands `run` reuses).
    pub fn text() -> Self {
        Self::new(OutputFormat::Text)
    }

    pub fn is_json(&self) -> bool {
        self.json
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lines of the result: printed as they are in text, each kept (trimmed) for the document.
    pub fn lines(&self, text: &str) -> Result<(), Error> {
        if self.json {
            self.recorded().summary.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| {
                if text.ends_with('\n') {
                    Ok(())
                } else {
                    out.write_all(b"\n")
                }
            })
            .map_err(|source| Error::Io {
                action: "writing the result to",
                path: "stdout".into(),
                source,
            })
    }

    /// The agent the command acted on.
    pub fn agent(&self, agent: AgentRef) {
        self.recorded().agent = Some(agent);
    }

    /// A command's outcome: its text, and its agent for the document.
    pub fn outcome(&self, o: Outcome) -> Result<(), Error> {
        if let Some(a) = o.agent {
            self.agent(a);
        }
        if o.steps.is_some() {
            self.recorded().steps = o.steps;
        }
        self.lines(&o.text)
    }

    /// A command's whole report (`status`, `doctor`, `prune`), for the document.
    pub fn report(&self, report: serde_json::Value) {
        self.recorded().report = Some(report);
    }

    /// The document for `command` ended with `code` (and `error`).
    pub fn document(&self, command: &str, code: u8, error: Option<&Error>) -> Document {
        let mut r = self.recorded();
        Document {
            schema_version: SCHEMA_VERSION,
            command: command.to_owned(),
            ok: code == 0,
            exit_code: code,
            result: crate::error::code::meaning(code),
            error: error.map(|e| crate::report::report(e)),
            summary: std::mem::take(&mut r.summary),
            agent: r.agent.take(),
            steps: r.steps.take(),
            report: r.report.take(),
        }
    }

    /// Prints the document (JSON mode only; text was printed as it came).
    pub fn finish(&self, command: &str, code: u8, error: Option<&Error>) {
        if !self.json {
            return;
        }
        let doc = self.document(command, code, error);
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => println!("{text}"),
            Err(e) => tracing::error!("could not write the JSON result: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_carries_what_was_recorded_and_the_codes_meaning() {
        let out = Out::new(OutputFormat::Json);
        out.lines("installed\n  agent:        vm1 (id 3)\n")
            .unwrap();
        out.report(serde_json::json!({"configured": true}));
        let e = Error::Input("invalid --pool ''".into());
        let doc = serde_json::to_value(out.document("install", 2, Some(&e))).unwrap();
        assert_eq!(doc["schema_version"], SCHEMA_VERSION);
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["result"], "invalid input or usage");
        assert_eq!(doc["error"], "invalid --pool ''");
        assert_eq!(doc["summary"][1], "agent:        vm1 (id 3)");
        assert_eq!(doc["report"]["configured"], true);
        assert!(doc.get("agent").is_none());
    }
}
