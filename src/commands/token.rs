//! `agent-bootstrap token`: the managed identity's Azure DevOps token on stdout, and nothing else,
//! for `az devops login`, `AZURE_DEVOPS_EXT_PAT` or `curl -H "Authorization: Bearer $(…)"`.

use std::io::Write;

use crate::env::Env;
use crate::error::Error;
use crate::identity::{IMDS_BUDGET, ImdsClient, Selector};
use crate::net::Net;

pub async fn run(selector: &Selector, env: &Env, net: &Net) -> Result<(), Error> {
    let budget = net.clock().budget(IMDS_BUDGET);
    let token = ImdsClient::from_env(env, net)?
        .token(selector, budget)
        .await?;
    let mut out = std::io::stdout().lock();
    // The one place the token is meant to be seen.
    writeln!(out, "{}", token.token.expose()).map_err(|source| Error::Io {
        action: "writing the token to",
        path: "stdout".into(),
        source,
    })?;
    Ok(())
}
