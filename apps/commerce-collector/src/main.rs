//! `commerce-collector`: see the library's documentation for what each command does.

use clap::{Parser, Subcommand};
use commerce_collector::config::Config;

/// Each request and batch allocates and frees many small buffers across the worker threads;
/// mimalloc's thread-local free lists serve them faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Consumes commerce events, keeps product metrics, serves rankings"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Consume events and serve the ranking API. The default.
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate {
        /// Never create the database (nor connect to the server's `postgres` database): it
        /// must exist, provisioned by the operator.
        #[arg(long)]
        no_create_database: bool,
    },
    /// Rebuild the weekly and monthly rollups (and their ranks) of every period touching
    /// FROM..=TO, with a progress bar.
    Rollup {
        /// First business date, YYYY-MM-DD.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// Last business date, YYYY-MM-DD.
        #[arg(long)]
        to: chrono::NaiveDate,
    },
    /// Dead letters.
    Dlq {
        #[command(subcommand)]
        command: Dlq,
    },
}

#[derive(Subcommand)]
enum Dlq {
    /// Re-publish dead letters to their source topic, with a progress bar. Events applied
    /// meanwhile, or replayed before, are skipped by the consumer's dedupe.
    Replay {
        /// Only these event types (repeatable), e.g. `--type OrderPaid`.
        #[arg(long = "type")]
        event_types: Vec<commerce_events::EventType>,
        /// Only these reasons (repeatable): empty, invalid_envelope, invalid_event_id,
        /// past_horizon, database.
        #[arg(long = "reason")]
        reasons: Vec<commerce_collector::dlq::Reason>,
        /// Only dead letters written at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only dead letters written before this time (RFC 3339).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing("commerce-collector");
    let result = run().await;
    // Spans still queued for export leave before the process does.
    commerce_telemetry::shutdown_tracing();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Migrate { no_create_database } = command {
        // A migration job needs the database, not the consumer's or Redis's settings.
        let url =
            commerce_config::from_env_or_exit("commerce-collector", Config::read_database_url);
        return commerce_db::migrate(&url, commerce_collector::MIGRATIONS, !no_create_database)
            .await;
    }
    let config = commerce_config::from_env_or_exit("commerce-collector", Config::read);
    match command {
        Command::Serve => {
            let app = commerce_collector::startup::Application::build(config).await?;
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate { .. } => unreachable!("handled above"),
        Command::Rollup { from, to } => {
            let pool = commerce_db::pool(&config.database_url, 2)?;
            let mut conn = pool.get().await?;
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} periods, {elapsed} elapsed, ETA {eta}",
                )
                .expect("valid template"),
            );
            let n = commerce_collector::rollup::rollup_range(
                &mut conn,
                from,
                to,
                config.weights,
                |done, total| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                },
            )
            .await?;
            bar.finish();
            println!("rebuilt {n} weekly and monthly periods between {from} and {to}");
            Ok(())
        }
        Command::Dlq {
            command:
                Dlq::Replay {
                    event_types,
                    reasons,
                    since,
                    until,
                },
        } => {
            let filter = commerce_collector::dlq::Filter {
                event_types,
                reasons,
                since,
                until,
            };
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} dead letters read, {elapsed} elapsed, ETA {eta}",
                )
                .expect("valid template"),
            );
            let done = commerce_collector::dlq::replay(&config, &filter, |read, total| {
                bar.set_length(total);
                bar.set_position(read);
            })
            .await?;
            bar.finish();
            println!(
                "replayed {} of {} dead letters to their source topics",
                done.replayed, done.read
            );
            Ok(())
        }
    }
}
