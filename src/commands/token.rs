//! `agent-bootstrap token`: the identity's Azure DevOps token on stdout, and nothing else, for
//! `az devops login`, `AZURE_DEVOPS_EXT_PAT` or `curl -H "Authorization: Bearer $(…)"` (a PAT, from
//! `--identity pat`, is printed as it is: use it as Basic).

use std::io::Write;

use crate::env::Env;
use crate::error::Error;
use crate::identity::{IMDS_BUDGET, Request};
use crate::net::Net;
use crate::os::Os;

pub async fn run(request: &Request, env: &Env, os: Os, net: &Net) -> Result<(), Error> {
    let budget = net.clock().budget(IMDS_BUDGET);
    let tokens = super::tokens(request, env, &os, net).await?;
    let token = tokens.get(&budget).await?;
    let mut out = std::io::stdout().lock();
    // The one place the token is meant to be seen.
    writeln!(out, "{}", token.expose()).map_err(|source| Error::Io {
        action: "writing the token to",
        path: "stdout".into(),
        source,
    })?;
    Ok(())
}
