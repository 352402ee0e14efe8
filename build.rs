//! Build facts for `--version`: the commit the binary was built from and the target triple.
//!
//! The commit comes from `git` when the source is a checkout, else from `AGENT_BOOTSTRAP_COMMIT`
//! when a packager sets it, else it is "unknown" (a crate built from a tarball has no history).
//! The triple is cargo's `TARGET`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=AGENT_BOOTSTRAP_COMMIT");
    let commit = std::env::var("AGENT_BOOTSTRAP_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "--short=12", "HEAD"])?;
            // Rebuilt when HEAD moves (a commit, a checkout): HEAD, the branches (a directory:
            // cargo watches its newest file) and packed-refs, at the paths git gives, so a
            // worktree's own HEAD and the common directory's refs are both watched.
            for name in ["HEAD", "refs/heads", "packed-refs"] {
                if let Some(path) = git(&["rev-parse", "--git-path", name])
                    && std::path::Path::new(&path).exists()
                {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            Some(head)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AGENT_BOOTSTRAP_COMMIT={commit}");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=AGENT_BOOTSTRAP_TARGET={target}");
}
