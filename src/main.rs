//! The `scored` command line: the daemon and the tools operators use beside it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use scored::topology::{self, Topology};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "scored",
    version,
    about = "S-CORE: network-aware live migration of VMs, decided on every hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check or generate topology files.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Write this host's key and print its PeerId for the topology file.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = scored::identity::DEFAULT_KEY_PATH)]
        out: PathBuf,
        /// Replace an existing key (the host's PeerId changes).
        #[arg(long)]
        force: bool,
    },
    /// Developer testbed: hypervisors in network namespaces with real libvirt (root only).
    #[command(subcommand)]
    Testbed(scored::testbed::cli::TestbedCommand),
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate topology files and print a summary of each.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a generated regular-tree topology (the shipped large examples).
    Generate {
        #[arg(value_parser = ["dc-2560", "fat-tree-k4"])]
        shape: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scored: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Topology(TopologyCommand::Check { files }) => Ok(topology_check(&files)),
        Command::Topology(TopologyCommand::Generate { shape }) => {
            let spec = match shape.as_str() {
                "dc-2560" => topology::generate::dc_2560(),
                _ => topology::generate::fat_tree_k4(),
            };
            print!("{}", topology::generate::tree(&spec));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, force } => {
            let key = scored::identity::generate(&out, force)
                .with_context(|| "scored keygen".to_string())?;
            eprintln!("wrote {}", out.display());
            println!("{}", key.public().to_peer_id());
            Ok(ExitCode::SUCCESS)
        }
        Command::Testbed(cmd) => {
            scored::testbed::cli::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn topology_check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for f in files {
        match Topology::load(f) {
            Ok(t) => print_summary(&t),
            Err(errs) => {
                failed = true;
                eprintln!("{errs}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_summary(t: &Topology) {
    let hosts = t.hosts();
    let racks = t.racks();
    let vms: u64 = hosts.iter().map(|h| h.max_vms as u64).sum();
    let without = t.hosts_without_identity().count();
    println!("{}: ok", t.source().display());
    println!(
        "  hosts     {} in {} racks ({} switches, {} tiers)",
        hosts.len(),
        racks.len(),
        t.switches().len(),
        t.depth()
    );
    let levels: Vec<String> = (1..=t.levels())
        .map(|l| {
            format!(
                "{l} {} c={:.4} (path {:.4})",
                t.level_names()[l as usize - 1],
                t.weights().weight(l),
                t.weights().path_cost(l)
            )
        })
        .collect();
    println!("  levels    {}", levels.join("; "));
    println!("  capacity  {vms} VMs at most");
    if without == 0 {
        println!("  identity  every host has an address and a peer_id: ready for `scored run`");
    } else {
        println!(
            "  identity  {without} of {} hosts lack an address or peer_id: usable for `scored sim` only",
            hosts.len()
        );
    }
}
