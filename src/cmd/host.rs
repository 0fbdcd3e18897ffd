//! `confab host …`: the host library's command line.

use anyhow::Context;
use confab::config::{self, Config};
use confab::host::{self, HostError, HostSettings, home::Home};
use confab::wire::ErrorCode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Home folder: key pair, port, host cache (overrides host.home; default ~/.confab).
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create an account (password from CONFAB_PASSWORD or a prompt).
    Register {
        /// 3-32 characters of a-z 0-9 . _ -
        user: String,
    },
    /// Log in, report the super node, public address and NAT, and log out.
    Login {
        /// The username.
        user: String,
    },
    /// Set the status published at every login: online, away, busy or invisible.
    Status {
        /// The status.
        #[arg(value_parser = ["online", "away", "busy", "invisible"])]
        status: String,
    },
    /// Edit the profile published at every login (≤ 1 KiB in all).
    Profile {
        #[command(subcommand)]
        action: ProfileAction,
    },
    /// Log in as USER and search users by name words, narrowed by any city, country or
    /// language words given (case and accents ignored).
    Search {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        /// Most results.
        #[arg(long, default_value_t = 10)]
        limit: u8,
        /// The words.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Log in as USER and manage the buddy list (kept at the login server, sealed with
    /// your password).
    Buddy {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        #[command(subcommand)]
        action: BuddyAction,
    },
    /// Log in as USER and call WHOM: play a WAV into the call, record what comes back.
    Call {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        /// Whom to call.
        whom: String,
        #[command(flatten)]
        audio: CallAudio,
        /// How long to stay connected before hanging up.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Log in as USER and wait for a call; answer it, play and record; exit when it ends.
    Online {
        /// The account to log in with.
        user: String,
        /// Answer incoming calls automatically, or decline them.
        #[arg(long, default_value = "auto", value_parser = ["auto", "never"])]
        answer: String,
        #[command(flatten)]
        audio: CallAudio,
        /// Give up waiting for a call after this long.
        #[arg(long = "wait", default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Take every file a buddy offers into DIR and stay online (printing chat and
        /// file events) for `--wait`; files offered to others are served meanwhile.
        #[arg(long, value_name = "DIR")]
        files: Option<PathBuf>,
    },
    /// Offer FILE to WHOM: waits until they have it whole, or reports `offered` when they
    /// are offline (your next `confab host online` serves it when they come). Run again
    /// after an interruption, it resumes.
    SendFile {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        /// To whom.
        whom: String,
        /// The file.
        file: PathBuf,
    },
    /// Chat as USER: messages are end-to-end encrypted, stored by the super nodes for a
    /// recipient who is offline, and reach every device of the recipient.
    Chat {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        #[command(subcommand)]
        action: ChatAction,
    },
    /// Log in as USER and look WHOM up in the Global Index.
    Find {
        /// Who you are (the account to log in with).
        #[arg(long = "as", value_name = "USER")]
        me: String,
        /// Whom to find.
        whom: String,
    },
}

/// What a call plays and records.
#[derive(Debug, clap::Args)]
struct CallAudio {
    /// A WAV file to play into the call (48 kHz 16-bit PCM; silence after it ends).
    #[arg(long)]
    play: Option<PathBuf>,
    /// Where to write what the other side says (WAV, 48 kHz mono 16-bit).
    #[arg(long)]
    record: Option<PathBuf>,
    /// Media through a super-node relay only (your address stays hidden).
    #[arg(long)]
    relay_only: bool,
    /// Reach the relay over TCP, as when UDP is blocked (automatic when it is).
    #[arg(long)]
    relay_tcp: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BuddyAction {
    /// Add a contact and ask for their authorization (accepts theirs if they asked first).
    Add {
        /// The contact.
        user: String,
        /// A note shown with the request.
        #[arg(long, default_value = "")]
        message: String,
    },
    /// Accept a contact's request: you see each other's status, invisible included.
    Accept {
        /// Who asked.
        user: String,
    },
    /// Decline a contact's request.
    Decline {
        /// Who asked.
        user: String,
    },
    /// Take a contact off the list.
    Remove {
        /// The contact.
        user: String,
    },
    /// Block a user: their requests are dropped and they get no presence.
    Block {
        /// The user.
        user: String,
    },
    /// List contacts with their status, and requests waiting for an answer.
    List,
}

#[derive(Debug, clap::Subcommand)]
enum ChatAction {
    /// Send TEXT to WHOM: prints the message id and whether it was delivered (a device of
    /// WHOM confirmed it within a few seconds) or stored for them. `@NAME` sends to a group
    /// (delivered: every member's copy was pushed to a session at once).
    Send {
        /// The recipient, or `@NAME` for a group.
        whom: String,
        /// The message (at most 1,500 bytes).
        text: String,
    },
    /// Fetch what waits, print what has not been read yet, and mark it read.
    Read,
    /// Print the conversation with WHOM (or group `@NAME`) from this device's history (no
    /// login needed).
    History {
        /// The other side, or `@NAME` for a group.
        whom: String,
        /// Most messages, the newest.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Groups: a signed log every member holds; messages reach offline members too.
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum GroupAction {
    /// Found group NAME and invite the members: prints the group's id.
    Create {
        /// The group's name (at most 64 bytes); `@NAME` names it afterwards.
        name: String,
        /// Who is invited, separated by commas.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Invite USER into group @NAME (creator and admins).
    Invite {
        /// The group, `@NAME` or its id.
        group: String,
        /// Whom.
        user: String,
    },
    /// Remove USER from group @NAME (creator and admins); a new key leaves them out.
    Remove {
        /// The group, `@NAME` or its id.
        group: String,
        /// Whom.
        user: String,
    },
    /// Leave group @NAME.
    Leave {
        /// The group, `@NAME` or its id.
        group: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum ProfileAction {
    /// Set fields (the others are kept).
    Set {
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// City.
        #[arg(long)]
        city: Option<String>,
        /// Country.
        #[arg(long)]
        country: Option<String>,
        /// Language.
        #[arg(long)]
        language: Option<String>,
        /// Free text.
        #[arg(long)]
        about: Option<String>,
    },
    /// Show the profile.
    Show,
}

fn settings(c: &config::HostConfig) -> anyhow::Result<HostSettings> {
    HostSettings::from_config(c)
}

fn home(a: &Args, c: &config::HostConfig) -> anyhow::Result<Home> {
    let dir = match (&a.home, &c.home) {
        (Some(h), _) => h.clone(),
        (None, Some(h)) => config::path(h),
        (None, None) => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --home")?).join(".confab")
        }
    };
    Home::open(&dir).with_context(|| format!("home folder {}", dir.display()))
}

/// The password, wiped from memory when dropped.
fn password(confirm: bool) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Ok(p) = std::env::var("CONFAB_PASSWORD") {
        return Ok(p.into());
    }
    let p = zeroize::Zeroizing::new(
        rpassword::prompt_password("password: ").context("no CONFAB_PASSWORD and no terminal to ask for a password")?,
    );
    if confirm && *zeroize::Zeroizing::new(rpassword::prompt_password("password again: ")?) != *p {
        anyhow::bail!("the passwords differ");
    }
    Ok(p)
}

/// The error code label for JSON output and scripts.
fn code(e: &HostError) -> &'static str {
    match e {
        HostError::Account(a) => a.code().map(ErrorCode::label).unwrap_or("unreachable"),
        HostError::Ladder(_) => "no_supernode",
        HostError::Local(_) => "local",
        HostError::Refused(_) => "refused",
    }
}

fn fail(json: bool, e: HostError) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::json!({ "error": e.to_string(), "code": code(&e) }));
        esay!("error: {e}");
        Ok(ExitCode::FAILURE)
    } else {
        Err(e.into())
    }
}

pub async fn run(a: Args, config: Config) -> anyhow::Result<ExitCode> {
    let home = home(&a, &config.host)?;
    match &a.command {
        Command::Status { status } => {
            let s: confab::index::Status = serde_json::from_value(serde_json::json!(status))?;
            home.set_status(s)?;
            if a.json {
                println!("{}", serde_json::json!({ "status": status }));
            } else {
                say!("status {status} will be published at every login");
            }
        }
        Command::Profile { action } => {
            let mut p = home.profile();
            if let ProfileAction::Set { display_name, city, country, language, about } = action {
                for (field, value) in [
                    (&mut p.display_name, display_name),
                    (&mut p.city, city),
                    (&mut p.country, country),
                    (&mut p.language, language),
                    (&mut p.about, about),
                ] {
                    if let Some(v) = value {
                        *field = v.clone();
                    }
                }
                let n = p.encoded_len();
                if n > confab::index::entry::PROFILE_LEN_MAX {
                    anyhow::bail!(
                        "the profile would be {n} bytes; at most {} are allowed",
                        confab::index::entry::PROFILE_LEN_MAX
                    );
                }
                home.set_profile(&p)?;
            }
            if a.json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                say!(
                    "display name  {}\ncity          {}\ncountry       {}\nlanguage      {}\nabout         {}",
                    p.display_name,
                    p.city,
                    p.country,
                    p.language,
                    p.about
                );
            }
        }
        Command::Register { user } => {
            let s = settings(&config.host)?;
            let pw = password(true)?;
            match host::register(&s, &home, user, &pw).await {
                Ok(name) if a.json => println!("{}", serde_json::json!({ "user": name, "registered": true })),
                Ok(name) => say!("registered {name}"),
                Err(e) => return fail(a.json, e),
            }
        }
        Command::Login { user } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let session = match host::login(&s, &home, user, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            let r = &session.report;
            if a.json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                say!("logged in as {}", r.user);
                say!(
                    "  super node      {} at {} over {} ({:.1} ms)",
                    r.supernode,
                    r.supernode_addr,
                    r.transport,
                    r.rtt_ms
                );
                say!("  public address  {}", r.public_addr);
                say!("  NAT             {}", r.nat);
                say!("  credential      valid until {}", r.credential_expires);
                say!("  own port        {} (UDP and TCP)", r.local_port);
                if r.update_available {
                    say!("  update available: version {} (this is {})", r.latest_version, confab::VERSION);
                }
            }
            session.logout().await;
        }
        Command::Search { me, limit, words } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let mut session = match host::login(&s, &home, me, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            let found = session.search(&words.join(" "), *limit).await;
            session.logout().await;
            match found {
                Ok(v) if a.json => println!("{}", serde_json::to_string(&v)?),
                Ok(v) if v.is_empty() => say!("nobody matches {:?}", words.join(" ")),
                Ok(v) => {
                    for f in v {
                        say!(
                            "{:<20} {:<8} {}  {} {}",
                            f.user,
                            f.status.label(),
                            f.profile.display_name,
                            f.profile.city,
                            f.profile.country
                        );
                    }
                }
                Err(e) => return fail(a.json, e),
            }
        }
        Command::Call { me, whom, audio, duration } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let source = load_audio(audio)?;
            let mut session = match host::login(&s, &home, me, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            session.set_relay_only(audio.relay_only);
            session.set_relay_tcp(audio.relay_tcp);
            let with = host::core::CallAudio { source, record: audio.record.is_some() };
            let id = match session.call_with(whom, with).await {
                Ok(id) => id,
                Err(e) => {
                    session.logout().await;
                    return fail(a.json, e);
                }
            };
            let code = run_call(&mut session, Some(id), *duration, audio, a.json, Duration::MAX).await?;
            session.logout().await;
            return Ok(code);
        }
        Command::Online { user, answer, audio, wait, files } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let source = load_audio(audio)?;
            let mut session = match host::login(&s, &home, user, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            // Offers we made wait in the home folder: served whenever their recipient calls.
            session.set_files(home.dir().join("transfers"), files.clone());
            if let Some(dir) = files {
                std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                if !a.json {
                    say!(
                        "online as {} via {}; taking files into {}",
                        session.report.user,
                        session.report.supernode,
                        dir.display()
                    );
                }
                let deadline = tokio::time::Instant::now() + *wait;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let Some(e) = session.next_event_within(left).await else { break };
                    show(&e, a.json);
                }
                session.logout().await;
                return Ok(ExitCode::SUCCESS);
            }
            session.set_relay_only(audio.relay_only);
            session.set_relay_tcp(audio.relay_tcp);
            if !a.json {
                say!("online as {} via {}; waiting for a call", session.report.user, session.report.supernode);
            }
            let code = answer_one(&mut session, answer == "auto", source, audio, a.json, *wait).await?;
            session.logout().await;
            return Ok(code);
        }
        Command::Buddy { me, action } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let mut session = match host::login(&s, &home, me, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            let result = buddy(&mut session, action, a.json).await;
            session.logout().await;
            match result {
                Ok(()) => {}
                Err(e) => return fail(a.json, e),
            }
        }
        Command::Chat { me, action } => return chat(a.json, &config.host, &home, me, action).await,
        Command::SendFile { me, whom, file } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let mut session = match host::login(&s, &home, me, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            session.set_files(home.dir().join("transfers"), None);
            let r = session.send_file(whom, file).await;
            session.logout().await;
            match r {
                Ok(f) if a.json => {
                    let v = if f.status == "offered" {
                        serde_json::json!({ "status": "offered", "transfer": f.transfer, "to": whom })
                    } else {
                        serde_json::json!({
                            "sha256": f.sha256,
                            "bytes": f.bytes,
                            "path": f.path,
                            "seconds": f.ms as f64 / 1000.0,
                            "transfer": f.transfer,
                            "chunks_sent": f.chunks,
                            "wire_bytes": f.wire_bytes,
                            "lost_bytes": f.lost_bytes,
                            "chunks_resent": f.chunks_resent,
                        })
                    };
                    println!("{v}");
                }
                Ok(f) if f.status == "offered" => say!("offered to {whom}: they get it when they next come online"),
                Ok(f) => say!(
                    "sent {} bytes to {whom} ({}, {:.1} s), sha256 {}",
                    f.bytes,
                    f.path,
                    f.ms as f64 / 1000.0,
                    f.sha256
                ),
                Err(e) => return fail(a.json, e),
            }
        }
        Command::Find { me, whom } => {
            let s = settings(&config.host)?;
            let pw = password(false)?;
            let mut session = match host::login(&s, &home, me, &pw).await {
                Ok(s) => s,
                Err(e) => return fail(a.json, e),
            };
            let found = session.find(whom).await;
            session.logout().await;
            match found {
                Ok(Some(f)) if a.json => println!("{}", serde_json::to_string(&f)?),
                Ok(Some(f)) => {
                    let seen =
                        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(f.last_seen));
                    say!("{}  {}  last seen {seen}  via {}", f.user, f.status.label(), f.supernode);
                    if let Some(a) = f.public_addr {
                        say!("  address {a}  NAT {}", f.nat);
                    }
                    if !f.profile.display_name.is_empty() || !f.profile.city.is_empty() {
                        say!("  {}  {} {}", f.profile.display_name, f.profile.city, f.profile.country);
                    }
                    say!("  (lookup asked {} super nodes, {})", f.asked, f.stage);
                }
                Ok(None) => {
                    let msg = format!("no user {whom:?} seen in the last 72 hours");
                    if a.json {
                        println!("{}", serde_json::json!({ "error": msg, "code": "not_found" }));
                    }
                    esay!("{msg}");
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return fail(a.json, e),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs one buddy-list command on a logged-in session and prints the outcome.
async fn buddy(session: &mut host::Session, action: &BuddyAction, json: bool) -> Result<(), HostError> {
    use confab::buddy::Relation;
    let done = |what: &str, user: &str, relation: Option<Relation>| {
        if json {
            let r = relation.map(Relation::label);
            println!("{}", serde_json::json!({ "user": user, "done": what, "relation": r }));
        } else {
            match relation {
                Some(r) => say!("{what} {user}: {}", r.label()),
                None => say!("{what} {user}"),
            }
        }
    };
    match action {
        BuddyAction::Add { user, message } => {
            let r = session.add_buddy(user, message).await?;
            done("added", user, Some(r));
        }
        BuddyAction::Accept { user } => {
            let r = session.answer_buddy(user, true).await?;
            done("accepted", user, Some(r));
        }
        BuddyAction::Decline { user } => {
            let r = session.answer_buddy(user, false).await?;
            done("declined", user, Some(r));
        }
        BuddyAction::Remove { user } => {
            session.remove_buddy(user).await?;
            done("removed", user, None);
        }
        BuddyAction::Block { user } => {
            session.block_buddy(user).await?;
            done("blocked", user, None);
        }
        BuddyAction::List => list_buddies(session, json).await?,
    }
    Ok(())
}

async fn list_buddies(session: &mut host::Session, json: bool) -> Result<(), HostError> {
    use confab::buddy::Relation;
    // Buddies online answer our login's presence within moments; then the index fills in
    // the others' last-seen times.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while tokio::time::Instant::now() < deadline {
        if session.next_event_within(deadline - tokio::time::Instant::now()).await.is_none() {
            break;
        }
    }
    let now = confab::unix_now();
    let mut rows = Vec::new();
    for b in session.buddies() {
        let (status, last_seen) = match (&b.presence, b.relation) {
            (Some(p), _) => (Some(p.shown(now)), Some(p.last_seen)),
            (None, Relation::Authorized) => match session.find(&b.user).await {
                Ok(Some(f)) => (Some(f.status), Some(f.last_seen)),
                _ => (None, None),
            },
            _ => (None, None),
        };
        rows.push(serde_json::json!({
            "user": b.user, "relation": b.relation.label(),
            "status": status.map(|s| s.label()), "last_seen": last_seen,
        }));
    }
    let requests = session.buddy_requests();
    if json {
        say!(
            "{}",
            serde_json::json!({ "buddies": rows, "requests": requests.iter().map(|r| serde_json::json!({
            "from": r.from, "message": r.message, "at": r.at })).collect::<Vec<_>>() })
        );
        return Ok(());
    }
    if rows.is_empty() {
        say!("no contacts yet (add one with `confab host buddy --as ME add USER`)");
    }
    for r in &rows {
        say!(
            "{:<24} {:<11} {}",
            r["user"].as_str().unwrap_or_default(),
            r["relation"].as_str().unwrap_or_default(),
            r["status"].as_str().unwrap_or("-")
        );
    }
    for r in requests {
        say!("request from {}: {:?} (accept with `confab host buddy --as ME accept {}`)", r.from, r.message, r.from);
    }
    Ok(())
}

fn load_audio(a: &CallAudio) -> anyhow::Result<Vec<i16>> {
    match &a.play {
        Some(p) => Ok(confab::call::audio::read_wav(p)?),
        None => Ok(Vec::new()),
    }
}

fn show(e: &host::buddies::Event, json: bool) {
    use host::buddies::Event;
    use host::calls::CallState;
    if json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
        return;
    }
    if let Event::Chat { from, to, text, request, .. } = e {
        let request = if *request { "  (message request: not a buddy)" } else { "" };
        say!("{from} → {to}: {text}{request}");
    }
    if let Event::File { peer, name, state, bytes, bytes_total, path, .. } = e {
        use confab::host::core::files::FileState;
        match state {
            FileState::Offered => say!("{peer} offers {name} ({bytes_total} bytes)"),
            FileState::Progress => say!("file with {peer}: {bytes}/{bytes_total} bytes"),
            FileState::Done => {
                say!("file with {peer} done{}", path.as_ref().map(|p| format!(": {p}")).unwrap_or_default())
            }
            FileState::Stopped { reason } => say!("file with {peer} stopped: {reason} (it resumes)"),
        }
    }
    if let Event::Call { peer, state, .. } = e {
        match state {
            CallState::Inviting => say!("calling {peer}…"),
            CallState::Ringing => say!("ringing ({peer})"),
            CallState::Connecting => say!("connecting to {peer}…"),
            CallState::Connected { path } => say!("connected to {peer} ({path})"),
            CallState::Ended { reason } => say!("call with {peer} ended: {reason}"),
        }
    }
}

/// Waits for the first incoming call, answers (or declines) it, then runs it.
async fn answer_one(
    session: &mut host::Session,
    accept: bool,
    source: Vec<i16>,
    audio: &CallAudio,
    json: bool,
    wait: Duration,
) -> anyhow::Result<ExitCode> {
    use host::buddies::Event;
    use host::calls::CallState;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(e) = session.next_event_within(left).await else {
            if !json {
                say!("no call within {}", humantime::format_duration(wait));
            }
            return Ok(ExitCode::FAILURE);
        };
        show(&e, json);
        if let Event::Call { call_id: hex, state: CallState::Ringing, .. } = &e
            && let Some(id) = host::calls::call_id_from_hex(hex)
        {
            if !accept {
                session.answer_call(id, false).await;
                continue;
            }
            session.set_call_audio(id, source);
            session.set_call_recording(id, audio.record.is_some());
            session.answer_call(id, true).await;
            return run_call(session, Some(id), Duration::MAX, audio, json, wait).await;
        }
    }
}

/// Runs a call until it ends (hanging up `duration` after it connected); writes the
/// recording and prints the report. Success when it connected.
async fn run_call(
    session: &mut host::Session,
    id: Option<[u8; 16]>,
    duration: Duration,
    audio: &CallAudio,
    json: bool,
    limit: Duration,
) -> anyhow::Result<ExitCode> {
    use host::buddies::Event;
    use host::calls::CallState;
    let Some(id) = id else { return Ok(ExitCode::FAILURE) };
    let hex = host::calls::call_id_hex(&id);
    let started = tokio::time::Instant::now();
    let mut hang_up_at: Option<tokio::time::Instant> = None;
    let mut connected = false;
    loop {
        let until = hang_up_at.unwrap_or_else(|| started + limit.min(Duration::from_secs(86_400)));
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match session.next_event_within(left).await {
            None => session.end_call(id).await,
            Some(e) => {
                show(&e, json);
                if let Event::Call { call_id, state, .. } = &e
                    && *call_id == hex
                {
                    match state {
                        CallState::Connected { .. } if !connected => {
                            connected = true;
                            hang_up_at = tokio::time::Instant::now().checked_add(duration);
                        }
                        CallState::Ended { .. } => break,
                        _ => {}
                    }
                }
            }
        }
    }
    if let Some(report) = session.take_call_report(id) {
        if let Some(path) = &audio.record {
            confab::call::audio::write_wav(path, &report.heard)?;
        }
        let m = &report.media;
        if json {
            println!("{}", serde_json::json!({ "event": "report", "call_id": hex, "media": m }));
        } else {
            say!(
                "path {}; frames sent {}, received {}, lost {}; jitter {:.1} ms",
                m.path.unwrap_or("-"),
                m.sent,
                m.received,
                m.lost,
                m.jitter_ms
            );
        }
    }
    Ok(if connected { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// How long a one-shot chat command waits for the store and the history to settle.
const CHAT_SETTLE: Duration = Duration::from_secs(10);
/// How long `chat send` waits for the recipient's delivery receipt before saying "stored".
const CHAT_RECEIPT_WAIT: Duration = Duration::from_secs(3);

/// One history row as printed (`h` names groups); `buddies` are the authorized buddies
/// (lowercase), when known: a 1:1 message from anyone else is a message request.
fn chat_row(
    h: &confab::chat::history::History,
    r: &confab::chat::history::Row,
    me: &str,
    buddies: Option<&[String]>,
) -> serde_json::Value {
    use confab::chat::message::{Body, Conversation};
    let text = match &r.body {
        Body::Text { text } => text.clone(),
        other => format!("[{}]", other.label()),
    };
    let (to, group) = match &r.conversation {
        Conversation::User(u) => (if r.from == me { u.clone() } else { me.to_owned() }, None),
        Conversation::Group(g) => {
            let name = h.group_name(g).ok().flatten().unwrap_or_else(|| hex::encode(g));
            (format!("@{name}"), Some(name))
        }
    };
    let is_group = group.is_some();
    let mut row = serde_json::json!({
        "id": hex::encode(r.id),
        "from": r.from,
        "to": to,
        "text": text,
        "sent_at": r.sent_at_ms,
        "group": group,
    });
    if let confab::chat::history::Side::Sent { status } = r.side {
        row["status"] = status.label().into();
    }
    if let Some(b) = buddies {
        row["request"] = (r.from != me && !is_group && !b.contains(&r.from)).into();
    }
    row
}

async fn chat(
    json: bool,
    c: &config::HostConfig,
    home: &Home,
    me: &str,
    action: &ChatAction,
) -> anyhow::Result<ExitCode> {
    use confab::chat::history::History;
    use confab::chat::message::Conversation;
    let me = me.to_ascii_lowercase();
    let history_path = home.chat_history_path(&me);
    if let ChatAction::History { whom, limit } = action {
        let h = History::open(&history_path).with_context(|| format!("chat history {}", history_path.display()))?;
        let conversation = match whom.strip_prefix('@') {
            Some(name) => match h.groups_named(name)?.as_slice() {
                [g] => Conversation::Group(*g),
                [] => anyhow::bail!("no group named {name} in this device's history"),
                _ => anyhow::bail!("several groups are named {name}"),
            },
            None => Conversation::User(whom.to_ascii_lowercase()),
        };
        let rows = h.history(&conversation, *limit)?;
        let messages: Vec<_> = rows.iter().map(|r| chat_row(&h, r, &me, None)).collect();
        print_messages(json, &messages);
        return Ok(ExitCode::SUCCESS);
    }
    let s = settings(c)?;
    let pw = password(false)?;
    let mut session = match host::login(&s, home, &me, &pw).await {
        Ok(s) => s,
        Err(e) => return fail(json, e),
    };
    let code = match action {
        ChatAction::Send { whom, text } if whom.starts_with('@') => match session.group_send(whom, text).await {
            Ok(sent) => {
                let status = match sent.status {
                    host::core::chat::SendStatus::Delivered => "delivered",
                    host::core::chat::SendStatus::Stored => "stored",
                };
                print_sent(json, &sent.id, &sent.to, status);
                ExitCode::SUCCESS
            }
            Err(e) => {
                session.wait_chat_idle(CHAT_SETTLE).await;
                session.logout().await;
                return fail(json, e);
            }
        },
        ChatAction::Send { whom, text } => match session.send_chat(whom, text).await {
            Ok(sent) => {
                // Delivered when a device of theirs says so (its receipt comes through
                // the store and is written to our history).
                let deadline = tokio::time::Instant::now() + CHAT_RECEIPT_WAIT;
                let h = History::open(&history_path)?;
                let mut status = "stored";
                while tokio::time::Instant::now() < deadline {
                    let now = h.status(sent.id)?;
                    if now.is_some_and(|st| st >= confab::chat::history::Status::Delivered) {
                        status = "delivered";
                        break;
                    }
                    session.settle_chat(Duration::from_millis(500)).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                print_sent(json, &sent.id, &sent.to, status);
                ExitCode::SUCCESS
            }
            Err(e) => {
                session.logout().await;
                return fail(json, e);
            }
        },
        ChatAction::Read => {
            if !session.settle_chat(CHAT_SETTLE).await {
                esay!("the store did not answer in time; showing what this device has");
            }
            let mut h = History::open(&history_path)?;
            let rows = h.unread()?;
            let buddies: Vec<String> = session
                .buddies()
                .into_iter()
                .filter(|b| b.relation == confab::buddy::op::Relation::Authorized)
                .map(|b| b.user.to_ascii_lowercase())
                .collect();
            let messages: Vec<_> = rows.iter().map(|r| chat_row(&h, r, &me, Some(&buddies))).collect();
            // Numbers missing from a buddy's sequence after the fetch: a store lost or
            // withheld those messages (strangers' and blocked users' streams are not
            // watched: they could only crowd out the buddies').
            let gaps: Vec<serde_json::Value> = h
                .missing(&me, |from| buddies.iter().any(|b| b == from))?
                .into_iter()
                .map(|(from, device, conversation, r)| {
                    let with = match conversation {
                        Conversation::User(u) => u,
                        Conversation::Group(g) => format!("@{}", hex::encode(g)),
                    };
                    serde_json::json!({
                        "from": from, "device": hex::encode(device.0), "conversation": with,
                        "missing": [r.start(), r.end()],
                    })
                })
                .collect();
            if json {
                println!("{}", serde_json::json!({ "messages": messages, "gaps": gaps }));
            } else {
                print_messages(false, &messages);
                for g in &gaps {
                    esay!(
                        "warning: messages {}–{} from {} never arrived (lost or withheld by a super node, or refused by the store when sent)",
                        g["missing"][0],
                        g["missing"][1],
                        g["from"].as_str().unwrap_or("")
                    );
                }
            }
            let ids: Vec<[u8; 16]> = rows.iter().map(|r| r.id).collect();
            h.mark_read(&ids)?;
            let mut by_sender: std::collections::BTreeMap<String, Vec<[u8; 16]>> = Default::default();
            // Read receipts are for 1:1 messages: a group's members are not told.
            let one_to_one = |r: &&confab::chat::history::Row| matches!(r.conversation, Conversation::User(_));
            for r in rows.iter().filter(|r| r.from != me).filter(one_to_one) {
                by_sender.entry(r.from.clone()).or_default().push(r.id);
            }
            for (from, ids) in by_sender {
                session.read_chat(&from, ids).await;
            }
            session.wait_chat_idle(CHAT_SETTLE).await;
            ExitCode::SUCCESS
        }
        ChatAction::History { .. } => unreachable!("answered above without a login"),
        ChatAction::Group { action } => {
            use host::core::chat::GroupCommand;
            let r = match action {
                GroupAction::Create { name, members } => session.group_create(name, members).await,
                GroupAction::Invite { group, user } => {
                    session.group_command(GroupCommand::Invite { group: group.clone(), member: user.clone() }).await
                }
                GroupAction::Remove { group, user } => {
                    session.group_command(GroupCommand::Remove { group: group.clone(), member: user.clone() }).await
                }
                GroupAction::Leave { group } => {
                    session.group_command(GroupCommand::Leave { group: group.clone() }).await
                }
            };
            match r {
                Ok(done) => {
                    let id = hex::encode(done.id);
                    let name = done.to.trim_start_matches('@').to_owned();
                    let members = match action {
                        GroupAction::Create { members, .. } => members.clone(),
                        _ => Vec::new(),
                    };
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "id": id, "group": name, "members": members, "status": "ok" })
                        );
                    } else {
                        say!("ok: group @{name} ({id})");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    session.wait_chat_idle(CHAT_SETTLE).await;
                    session.logout().await;
                    return fail(json, e);
                }
            }
        }
    };
    session.wait_chat_idle(CHAT_SETTLE).await;
    session.logout().await;
    Ok(code)
}

/// A sent message: `{id, to, status}`.
fn print_sent(json: bool, id: &[u8; 16], to: &str, status: &str) {
    let id = hex::encode(id);
    if json {
        println!("{}", serde_json::json!({ "id": id, "to": to, "status": status }));
    } else {
        say!("{status}: message {id} to {to}");
    }
}

fn print_messages(json: bool, messages: &[serde_json::Value]) {
    if json {
        println!("{}", serde_json::json!({ "messages": messages }));
        return;
    }
    if messages.is_empty() {
        say!("no messages");
    }
    for m in messages {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(m["sent_at"].as_u64().unwrap_or(0)),
        );
        let request = if m["request"].as_bool() == Some(true) { "  (message request: not a buddy)" } else { "" };
        say!(
            "{when}  {} → {}: {}{request}",
            m["from"].as_str().unwrap_or(""),
            m["to"].as_str().unwrap_or(""),
            m["text"].as_str().unwrap_or("")
        );
    }
}
