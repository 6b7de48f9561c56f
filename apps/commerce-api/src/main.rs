//! `commerce-api`: see the crate documentation of the library for what each command does.

use clap::{Parser, Subcommand};
use commerce_api::config::Config;

/// Requests allocate and free many small buffers across two worker threads; mimalloc's
/// thread-local free lists serve them faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "The storefront's transactional API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and, unless disabled, the outbox relay). The default.
    Serve,
    /// Create the database if it is missing and apply pending migrations, then exit.
    Migrate {
        /// Never create the database (nor connect to the server's `postgres` database): it
        /// must exist, provisioned by the operator.
        #[arg(long)]
        no_create_database: bool,
    },
    /// Insert a small demo catalog unless products exist, then exit.
    Seed,
    /// Run only the outbox relay, until SIGTERM; `/metrics` and `/health/*` on `HTTP_ADDR`.
    Relay,
    /// Settle every open business day through `--date` (default: yesterday), in order, one
    /// transaction per day, then exit. A day that is closed already is left as it is; the day
    /// must have ended (in `BUSINESS_TIME_ZONE`).
    Settle {
        /// The last business day to settle, `YYYY-MM-DD`.
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commerce_telemetry::init_tracing("commerce-api");
    let result = run().await;
    // Spans still queued for export leave before the process does.
    commerce_telemetry::shutdown_tracing();
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    if let Command::Migrate { no_create_database } = command {
        let create = !no_create_database;
        // A migration job needs the database, not the server's secrets.
        let url = commerce_config::from_env_or_exit("commerce-api", Config::read_database_url);
        return commerce_db::migrate(&url, commerce_api::MIGRATIONS, create).await;
    }
    let config = commerce_config::from_env_or_exit("commerce-api", Config::read);
    match command {
        Command::Serve => {
            let app = commerce_api::startup::Application::build(config).await?;
            // With the database up, settle the admin's credentials before serving: production
            // refuses to start while an administrator accepts the development password. (With it
            // down, the same runs in the background and keeps the instance unready.)
            use commerce_api::startup::{AdminCredentials, secure_admin};
            if let Ok(AdminCredentials::DevelopmentPassword(login_id)) =
                secure_admin(app.state()).await
            {
                eprintln!(
                    "commerce-api: the administrator account `{login_id}` accepts the development password; \
                     give it another password (or remove its admin role) before starting in production"
                );
                // The lines logged so far are still queued for the log writer.
                commerce_telemetry::shutdown_tracing();
                std::process::exit(2);
            }
            app.run_until_stopped(commerce_web::shutdown_signal()).await
        }
        Command::Migrate { .. } => unreachable!("handled above"),
        Command::Relay => {
            commerce_api::startup::relay_server(config)
                .await?
                .run_until_stopped(commerce_web::shutdown_signal())
                .await
        }
        Command::Seed => commerce_api::seed::seed(&config.database_url, &config.topics()).await,
        Command::Settle { date } => settle(&config, date).await,
    }
}

/// `settle`: closes the open business days through `date` with a progress bar.
async fn settle(config: &Config, date: Option<chrono::NaiveDate>) -> anyhow::Result<()> {
    use commerce_api::domain::{settlement, settlement_job};
    let tz = config.settlement.time_zone;
    let today = settlement_job::business_date(chrono::Utc::now(), tz);
    let through = date.unwrap_or_else(|| today.pred_opt().unwrap_or(today));
    anyhow::ensure!(
        through < today,
        "business day {through} has not ended yet in {tz}: only past days are settled"
    );
    let pool = commerce_db::pool(&config.database_url, 2)?;
    let mut conn = pool.get().await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} days closed, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    let workers = config.settlement.workers;
    let closed = settlement::settle_through(
        &mut conn,
        &config.topics(),
        through,
        workers,
        |day, i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
            bar.set_message(format!(
                "{}: {} settlements, {} lines",
                day.business_date, day.settlements, day.lines
            ));
        },
    )
    .await?;
    bar.finish_and_clear();
    for day in &closed {
        println!(
            "{}\t{}\t{} settlements\t{} lines\tgross {}\tcommission {}\tclawbacks {}\tpayable {}",
            day.business_date,
            if day.already_closed {
                "closed before"
            } else {
                "closed now"
            },
            day.settlements,
            day.lines,
            day.gross,
            day.commission,
            day.clawbacks,
            day.payable
        );
    }
    if closed.is_empty() {
        println!("nothing to settle through {through}");
    }
    Ok(())
}
