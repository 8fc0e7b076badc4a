//! The `scored` command line: the daemon and the tools operators use beside it.

use anyhow::Context;
use clap::{Parser, Subcommand};
use scored::topology::{self, Topology};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    /// Run the daemon (one per hypervisor).
    Run {
        /// The configuration file.
        #[arg(long, default_value = scored::config::DEFAULT_PATH)]
        config: PathBuf,
        /// Override one option: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<scored::config::Override>,
        /// Validate the configuration and topology, then exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Show what the running daemon sees: token, local VMs with partners, rates, levels, cost,
    /// recent decisions with their Eq. 3.2 numbers, peers.
    Status(ControlArgs),
    /// What this host would do for each local VM now (dry-run).
    Plan(ControlArgs),
    /// Put this host in maintenance and move its VMs away, one per token visit.
    Drain(ControlArgs),
    /// Turn maintenance on or off (a host in maintenance is never a destination).
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Pin a VM (by address or name) so scored never moves it; --off unpins.
    Pin {
        vm: String,
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Check or generate topology files.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Check the placement rules file (anti-affinity, affinity, exclusions, windows, budgets).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Simulate S-CORE's token policies on a topology against a centralised baseline.
    Sim(Box<scored::sim::SimArgs>),
    /// Run many real daemons on this machine (libp2p on 127.0.0.1) over a simulated data
    /// centre, with hosts downed, a stalled hypervisor, a partition; report what the protocol did.
    Lab(Box<scored::lab::LabArgs>),
    /// Capture on VM taps and print the live per-(VM, partner) rates scored decides from.
    Flows {
        /// Tap to watch: TAP=MAC (the guest's MAC, e.g. from `virsh domiflist`), or TAP alone
        /// for an interface whose own MAC and address are the VM's. Repeat for several.
        #[arg(long = "iface", required = true, value_name = "TAP[=MAC]")]
        iface: Vec<scored::flows::report::TapArg>,
        /// Seconds between reports.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Reports to print before exiting (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        /// Averaging window (time constant of the moving average), seconds.
        #[arg(long, default_value_t = 30.0)]
        window: f64,
        /// Keep one frame in N (sampled in the kernel; rates are scaled back).
        #[arg(long, default_value_t = 1)]
        sample: u32,
    },
    /// Check the daemon configuration, or print it with defaults and overrides applied.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write this host's key and print its PeerId for the topology file.
    Keygen {
        /// Where to write the key.
        #[arg(long, default_value = scored::identity::DEFAULT_KEY_PATH)]
        out: PathBuf,
        /// Replace an existing key (the host's PeerId changes).
        #[arg(long)]
        force: bool,
    },
    /// Run a bare p2p node that prints its events as JSON lines (tests, troubleshooting).
    #[command(hide = true, name = "debug-p2p-node")]
    DebugP2pNode(scored::p2p::probe::ProbeArgs),
    /// Developer testbed: hypervisors in network namespaces with real libvirt (root only).
    #[cfg(feature = "testbed")]
    #[command(subcommand)]
    Testbed(scored::testbed::cli::TestbedCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file (errors as file:line:col).
    Check {
        #[arg(default_value = scored::config::DEFAULT_PATH)]
        file: PathBuf,
        /// Override one option, as `scored run` will: section.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<scored::config::Override>,
    },
    /// Print the effective configuration: the file, defaults and overrides merged.
    Print {
        #[arg(default_value = scored::config::DEFAULT_PATH)]
        file: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<scored::config::Override>,
    },
}

#[derive(clap::Args)]
struct ControlArgs {
    /// The daemon's control socket (default: control.socket from the configuration).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The configuration file the socket path is read from.
    #[arg(long, default_value = scored::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

impl ControlArgs {
    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if self.config.exists() {
            let c = scored::config::Config::load(&self.config, &[])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            return Ok(c.control.socket);
        }
        Ok(scored::config::ControlConfig::default().socket)
    }
}

fn control(args: &ControlArgs, req: scored::daemon::control::Request) -> anyhow::Result<ExitCode> {
    use scored::daemon::control::{Reply, render_plan, render_status, request};
    let path = args.socket()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = rt
        .block_on(request(&path, &req, Duration::from_secs(60)))
        .map_err(|e| anyhow::anyhow!(e))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(match reply {
            Reply::Error { .. } => ExitCode::FAILURE,
            _ => ExitCode::SUCCESS,
        });
    }
    match reply {
        Reply::Status(s) => print!("{}", render_status(&s)),
        Reply::Plan {
            decisions,
            violations,
        } => print!("{}", render_plan(&decisions, &violations)),
        Reply::Done { message } => println!("{message}"),
        Reply::Error { message } => {
            eprintln!("scored: {message}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Validate topology files and print a summary of each.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a generated topology: a regular tree (the shipped large examples) or an irregular
    /// one drawn from a fixed seed (`irregular`, `irregular-small`).
    Generate {
        #[arg(value_parser = topology::generate::SHAPES)]
        shape: String,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a rules file against the topology (every error as file:line:col) and
    /// summarise it: groups, exclusions, windows with their next opening, budgets.
    Check {
        /// The rules file (default: `placement.rules_file` of the configuration file, else
        /// /etc/scored/rules.toml).
        file: Option<PathBuf>,
        /// The topology file (default: the one the configuration file names).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// The configuration file the default paths are read from.
        #[arg(long, default_value = scored::config::DEFAULT_PATH)]
        config: PathBuf,
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
    use scored::daemon::control::Request;
    match cli.command {
        Command::Run {
            config,
            overrides,
            check_config,
        } => {
            scored::daemon::run::run(scored::daemon::run::DaemonOptions {
                config,
                overrides,
                check_config,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(a) => control(&a, Request::Status),
        Command::Plan(a) => control(&a, Request::Plan),
        Command::Drain(a) => control(&a, Request::Drain),
        Command::Maintenance { state, control: a } => {
            control(&a, Request::Maintenance { on: state == "on" })
        }
        Command::Pin {
            vm,
            off,
            control: a,
        } => control(&a, Request::Pin { vm, on: !off }),
        Command::Topology(TopologyCommand::Check { files }) => Ok(topology_check(&files)),
        Command::Rules(RulesCommand::Check {
            file,
            topology,
            config,
        }) => rules_check(file, topology, &config),
        Command::Topology(TopologyCommand::Generate { shape }) => {
            let text = topology::generate::render(&shape)
                .ok_or_else(|| anyhow::anyhow!("unknown shape `{shape}`"))?;
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => {
            scored::sim::run_cli(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(args) => {
            scored::lab::run_cli(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Flows {
            iface,
            interval,
            count,
            window,
            sample,
        } => {
            let secs = |what: &str, v: f64| {
                Duration::try_from_secs_f64(v)
                    .map_err(|_| anyhow::anyhow!("--{what} {v} is not a number of seconds"))
            };
            let opts = scored::flows::report::WatchOptions {
                taps: iface,
                interval: secs("interval", interval)?,
                count,
                window: secs("window", window)?,
                sample_one_in: sample,
            };
            scored::flows::report::watch(&opts, &mut std::io::stdout().lock())
                .context("scored flows")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file, overrides }) => {
            match scored::config::Config::load(&file, &overrides) {
                Ok(_) => {
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errs) => {
                    eprintln!("{errs}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Config(ConfigCommand::Print { file, overrides }) => {
            match scored::config::Config::load(&file, &overrides) {
                Ok(c) => {
                    print!("{}", c.to_toml());
                    Ok(ExitCode::SUCCESS)
                }
                Err(errs) => {
                    eprintln!("{errs}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Keygen { out, force } => {
            let key = scored::identity::generate(&out, force)
                .with_context(|| "scored keygen".to_string())?;
            eprintln!("wrote {}", out.display());
            println!("{}", key.public().to_peer_id());
            Ok(ExitCode::SUCCESS)
        }
        Command::DebugP2pNode(args) => {
            tokio::runtime::Runtime::new()?.block_on(scored::p2p::probe::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "testbed")]
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

fn rules_check(
    file: Option<PathBuf>,
    topology: Option<PathBuf>,
    config: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    // Paths not given come from the configuration the daemon would read, when there is one.
    let conf = if (file.is_none() || topology.is_none()) && config.exists() {
        Some(scored::config::Config::load(config, &[]).map_err(|e| anyhow::anyhow!("{e}"))?)
    } else {
        None
    };
    let file = file.unwrap_or_else(|| match &conf {
        Some(c) => c.placement.rules_file.clone(),
        None => scored::config::DEFAULT_RULES_FILE.into(),
    });
    let topology = topology.unwrap_or_else(|| match &conf {
        Some(c) => c.host.topology.clone(),
        None => scored::config::HostConfig::default().topology,
    });
    let file = file.as_path();
    let topo = match Topology::load(&topology) {
        Ok(t) => t,
        Err(errs) => {
            eprintln!("{errs}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if !file.exists() {
        eprintln!(
            "{}: no such file (the daemon runs with no placement rules while it is missing)",
            file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    match scored::rules::file::load(file, &topo) {
        Ok(rules) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            println!("{}: ok (topology {})", file.display(), topology.display());
            print!("{}", scored::rules::summary(&rules, &topo, now));
            Ok(ExitCode::SUCCESS)
        }
        Err(errs) => {
            eprintln!("{errs}");
            Ok(ExitCode::FAILURE)
        }
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
    if !t.vm_networks().is_empty() {
        let nets: Vec<String> = t.vm_networks().iter().map(|n| n.to_string()).collect();
        println!(
            "  networks  VMs in {} (other partners are never looked up)",
            nets.join(", ")
        );
    }
    if without == 0 {
        println!("  identity  every host has an address and a peer_id: ready for `scored run`");
    } else {
        println!(
            "  identity  {without} of {} hosts lack an address or peer_id: usable for `scored sim` only",
            hosts.len()
        );
    }
}
