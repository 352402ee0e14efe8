//! Fleets without orphans, through the real binary against the simulator: `prune` (offline agents
//! deleted, online, busy and recent ones kept), `watch` (Azure Scheduled Events: drain, deregister,
//! approve) and `run` (the container entrypoint: configure, run in the foreground, deregister
//! whatever way the agent ended).

#![cfg(unix)]

mod common;

use azure_sim::{ServerAgent, ids, now_secs};
use common::*;

const DAY: u64 = 86_400;

fn agent(id: u64, name: &str, status: &str, changed_days_ago: u64, busy: bool) -> ServerAgent {
    let changed = now_secs() - changed_days_ago * DAY;
    ServerAgent {
        id,
        name: name.into(),
        version: "4.264.2".into(),
        status: status.into(),
        enabled: true,
        public_key: String::new(),
        created_on: changed - DAY,
        status_changed_on: changed,
        assigned_request: busy.then_some(1000 + id),
    }
}

/// Pool Default: old offline agents of two fleets, an online one, a busy one, a recent one.
fn fleet_world() -> World {
    let w = World::new();
    w.sim.state().agents.insert(
        1,
        vec![
            agent(101, "vmss-a-0001", "offline", 30, false),
            agent(102, "vmss-a-0002", "offline", 9, false),
            agent(103, "vmss-a-0003", "online", 30, false),
            agent(104, "vmss-a-0004", "offline", 30, true),
            agent(105, "vmss-a-0005", "offline", 2, false),
            agent(106, "other-0001", "offline", 40, false),
        ],
    );
    w.sim.state().next_agent_id = 200;
    w
}

fn names(w: &World) -> Vec<String> {
    w.server_agents(1).into_iter().map(|a| a.name).collect()
}

#[test]
fn prune_dry_run_lists_and_deletes_nothing() {
    let w = fleet_world();
    let url = w.org_url();
    let run = w.run(&["prune", "--url", &url, "--offline-for", "7d", "--dry-run"]);
    run.assert_code(0);
    let out = &run.stdout;
    assert!(out.starts_with("ACTION"), "{out}");
    for name in ["vmss-a-0001", "vmss-a-0002", "other-0001"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("would delete") && l.contains(name)),
            "{name}: {out}"
        );
    }
    for name in ["vmss-a-0003", "vmss-a-0004", "vmss-a-0005"] {
        assert!(!out.contains(name), "{name} listed: {out}");
    }
    assert_eq!(names(&w).len(), 6);
    assert_eq!(w.count("DELETE", "/agents/"), 0);
}

#[test]
fn prune_deletes_only_long_offline_idle_agents_of_the_prefix() {
    let w = fleet_world();
    let url = w.org_url();
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--name-prefix",
        "vmss-a-",
        "--json",
    ]);
    run.assert_code(0);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let deleted: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["action"], "deleted");
            r["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(deleted, ["vmss-a-0001", "vmss-a-0002"]);
    assert_eq!(
        names(&w),
        ["vmss-a-0003", "vmss-a-0004", "vmss-a-0005", "other-0001"]
    );

    // Online, busy and recent agents outlive any threshold; the other fleet is untouched.
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "1d",
        "--name-prefix",
        "vmss-a-",
    ]);
    run.assert_code(0);
    assert!(run.stdout.contains("vmss-a-0005"), "{}", run.stdout);
    assert_eq!(names(&w), ["vmss-a-0003", "vmss-a-0004", "other-0001"]);
}

#[test]
fn prune_needs_manage_on_the_pool_and_a_valid_duration() {
    let w = fleet_world();
    let url = w.org_url();
    // readonly-mi is a member of the organization without Manage on the pool.
    let run = w.run(&[
        "prune",
        "--url",
        &url,
        "--offline-for",
        "7d",
        "--client-id",
        ids::NO_MANAGE_CLIENT,
    ]);
    run.assert_code(4);
    assert!(
        run.stderr.contains("no Manage permission"),
        "{}",
        run.stderr
    );
    assert_eq!(names(&w).len(), 6);

    for bad in ["7w", "10s", ""] {
        let run = w.run(&["prune", "--url", &url, "--offline-for", bad]);
        run.assert_code(2);
        assert!(run.stderr.contains("--offline-for"), "{}", run.stderr);
    }
}
