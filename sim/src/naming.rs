//! The fake agent's service name, written from the agent's C# (`CalculateServiceName`) on its own,
//! not with the product's code: the simulator is what the product is checked against, so it must
//! not share the product's mistakes. Pinned by the agent's own unit-test vectors
//! (`tests/sim_fidelity.rs` in agent-bootstrap).

/// `(serviceName, serviceDisplayName)` for the pattern `vsts.agent.{0}.{1}.{2}.service` and
/// `Azure Pipelines Agent ({0}.{1}.{2})` (Linux).
pub fn service_name(server_url: &str, pool: &str, agent: &str) -> (String, String) {
    service_name_for(server_url, pool, agent, "vsts.agent.", ".service")
}

/// The Windows pattern `vstsagent.{0}.{1}.{2}` (`WindowsServiceControlManager`).
pub fn windows_service_name(server_url: &str, pool: &str, agent: &str) -> (String, String) {
    service_name_for(server_url, pool, agent, "vstsagent.", "")
}

fn service_name_for(
    server_url: &str,
    pool: &str,
    agent: &str,
    prefix: &str,
    suffix: &str,
) -> (String, String) {
    let url = url::Url::parse(server_url).expect("the agent only stores absolute URLs");
    let host = url.host_str().unwrap_or_default();
    let account: String = if host.eq_ignore_ascii_case("dev.azure.com") {
        url.path()
            .split('/')
            .find(|s| !s.is_empty())
            .unwrap_or_default()
            .to_owned()
    } else {
        host.split('.').next().unwrap_or_default().to_owned()
    };
    // C#'s string.Length and Substring count UTF-16 code units.
    let units = |s: &str| s.encode_utf16().count();
    let substring = |s: &str, n: usize| -> String {
        let v: Vec<u16> = s.encode_utf16().take(n).collect();
        String::from_utf16_lossy(&v)
    };
    let pattern = |a: &str, p: &str, n: &str| format!("{prefix}{a}.{p}.{n}{suffix}");
    let mut name = pattern(&account, pool, agent);
    if units(&name) > 80 {
        let mut exceeded = units(&name) as isize - 80;
        let account_sub = substring(&account, 25);
        exceeded -= units(&account) as isize - units(&account_sub) as isize;
        let pool_sub = substring(pool, 25);
        exceeded -= units(pool) as isize - units(&pool_sub) as isize;
        let mut agent_sub = agent.to_owned();
        if exceeded > 0 {
            agent_sub = substring(agent, (units(agent) as isize - exceeded).max(0) as usize);
        }
        name = pattern(&account_sub, &pool_sub, &agent_sub);
    }
    let display = format!("Azure Pipelines Agent ({account}.{pool}.{agent})");
    (name, display)
}
