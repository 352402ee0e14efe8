//! A fake Azure CLI (`az`), for agent-bootstrap's `--identity azure-cli` tests: the simulator
//! program copied (or linked) as `az` on a test's `PATH` behaves as the few `az` commands the tool
//! runs, against the simulated IMDS.
//!
//! - `az login --identity [--client-id X | --object-id X | --resource-id X] --allow-no-subscriptions`
//!   asks IMDS for a token with that selector (so an identity the VM lacks fails as it does for the
//!   real CLI) and remembers the login in `$AZURE_CONFIG_DIR/sim-login.json`.
//! - `az account get-access-token --resource R --output json` without a login fails with the real
//!   CLI's "Please run 'az login' to setup account."; with one it prints the real CLI's JSON (a fresh
//!   token from IMDS for the remembered selector).
//!
//! `$AZURE_CONFIG_DIR/sim.json` says where the simulator is (`{"imds":"http://127.0.0.1:…"}`);
//! a file `$AZURE_CONFIG_DIR/sim-fail` makes every command print its content on stderr and exit 2.
//! Every invocation's arguments are appended to `$AZURE_CONFIG_DIR/sim-calls.log`. Tests write a
//! `sim-login.json` themselves to play a login made earlier (a developer's `az login`).

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::AZURE_DEVOPS_RESOURCE;

fn config_dir() -> PathBuf {
    std::env::var_os("AZURE_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".azure")))
        .unwrap_or_else(|| PathBuf::from(".azure"))
}

fn fail(code: i32, message: &str) -> i32 {
    eprintln!("{message}");
    code
}

/// The value after `flag`, if given.
fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

pub fn main(args: &[String]) -> i32 {
    let dir = config_dir();
    let _ = fs_err::create_dir_all(&dir);
    {
        use std::io::Write;
        if let Ok(mut log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("sim-calls.log"))
        {
            let _ = writeln!(log, "{}", args.join(" "));
        }
    }
    if let Ok(message) = fs_err::read_to_string(dir.join("sim-fail")) {
        return fail(2, message.trim());
    }
    let Ok(sim) = fs_err::read_to_string(dir.join("sim.json")) else {
        return fail(1, "ERROR: fake az: no sim.json in AZURE_CONFIG_DIR");
    };
    let sim: Value = serde_json::from_str(&sim).unwrap_or_default();
    let imds = sim["imds"].as_str().unwrap_or_default().to_owned();
    let words: Vec<&str> = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match words.as_slice() {
        ["login"] if args.iter().any(|a| a == "--identity") => {
            let selector = [
                ("--client-id", "client_id"),
                ("--object-id", "object_id"),
                ("--resource-id", "msi_res_id"),
            ]
            .iter()
            .find_map(|(flag, param)| value(args, flag).map(|v| (*param, v.to_owned())));
            match rt.block_on(imds_token(&imds, selector.as_ref())) {
                Ok(_) => {
                    let login = json!({"kind": "identity", "selector": selector});
                    let _ = fs_err::write(dir.join("sim-login.json"), login.to_string());
                    if value(args, "--output") != Some("none") {
                        println!("[]");
                    }
                    0
                }
                Err(e) => fail(1, &format!("ERROR: {e}")),
            }
        }
        ["account", "get-access-token"] => {
            if value(args, "--resource") != Some(AZURE_DEVOPS_RESOURCE) {
                return fail(1, "ERROR: fake az: unexpected --resource");
            }
            let Ok(login) = fs_err::read_to_string(dir.join("sim-login.json")) else {
                return fail(1, "ERROR: Please run 'az login' to setup account.");
            };
            let login: Value = serde_json::from_str(&login).unwrap_or_default();
            let selector = login["selector"].as_array().and_then(|a| {
                Some((
                    a.first()?.as_str()?.to_owned(),
                    a.get(1)?.as_str()?.to_owned(),
                ))
            });
            let selector = selector.as_ref().map(|(k, v)| (k.as_str(), v.clone()));
            match rt.block_on(imds_token(&imds, selector.as_ref())) {
                Ok(token) => {
                    let expires_on = token["expires_on"]
                        .as_str()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&json!({
                            "accessToken": token["access_token"],
                            "expiresOn": "2026-12-01 10:00:00.000000",
                            "expires_on": expires_on,
                            "subscription": "00000000-0000-0000-0000-000000000000",
                            "tenant": "72f988bf-0000-0000-0000-000000000000",
                            "tokenType": "Bearer"
                        }))
                        .unwrap()
                    );
                    0
                }
                Err(e) => fail(1, &format!("ERROR: {e}")),
            }
        }
        _ => fail(
            2,
            &format!("fake az: unsupported command: {}", args.join(" ")),
        ),
    }
}

async fn imds_token(imds: &str, selector: Option<&(&str, String)>) -> Result<Value, String> {
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let mut query = vec![
        ("api-version", "2018-02-01".to_owned()),
        ("resource", AZURE_DEVOPS_RESOURCE.to_owned()),
    ];
    if let Some((k, v)) = selector {
        query.push((k, v.clone()));
    }
    let url =
        url::Url::parse_with_params(&format!("{imds}/metadata/identity/oauth2/token"), &query)
            .map_err(|e| e.to_string())?;
    let r = client
        .get(url)
        .header("Metadata", "true")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!(
            "Failed to connect to MSI. {}",
            body["error_description"].as_str().unwrap_or("")
        ));
    }
    Ok(body)
}
