//! `agent-bootstrap token`: the managed identity's Azure DevOps token on stdout, and nothing else,
//! for `az devops login`, `AZURE_DEVOPS_EXT_PAT` or `curl -H "Authorization: Bearer $(…)"`.

use std::io::Write;

use crate::clock::Clock;
use crate::env::Env;
use crate::error::Error;
use crate::identity::{ImdsClient, Selector};

pub async fn run(selector: &Selector, env: &Env, clock: Clock) -> Result<(), Error> {
    let token = ImdsClient::from_env(env, clock)?.token(selector).await?;
    let mut out = std::io::stdout().lock();
    // The one place the token is meant to be seen.
    writeln!(out, "{}", token.token.expose()).map_err(|source| Error::Io {
        action: "writing the token to",
        path: "stdout".into(),
        source,
    })?;
    Ok(())
}
