//! The PostgreSQL server of the tests: Debian's `postgresql` package, driven by its own
//! `initdb` and `pg_ctl`.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use flopmeter_tls::dev::{DevCa, LeafSpec};

/// The superuser the tests connect as.
pub const SUPERUSER: &str = "postgres";
/// Its password (TCP connections need it; the Unix socket trusts local users).
pub const SUPERUSER_PASSWORD: &str = "flopmeter-test-password";

/// A PostgreSQL server in a temporary directory.
#[derive(Debug)]
pub struct Server {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the server's programs as the `postgres` OS user (the tests run as root).
    as_postgres: Option<(u32, u32)>,
    ca_file: PathBuf,
    ca_pem: String,
    next_db: AtomicU64,
}

static SHARED: OnceLock<Server> = OnceLock::new();

/// The test binary's server, started on first use and stopped when the binary exits.
pub fn shared() -> &'static Server {
    SHARED.get_or_init(Server::start)
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    socket_dir: PathBuf,
    port: u16,
    ca_file: PathBuf,
}

impl TestDatabase {
    /// A DSN over the Unix socket, as the superuser (trusted: no password, no TLS).
    pub fn socket_dsn(&self) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{}/{}",
            encode(&self.socket_dir.to_string_lossy()),
            self.port,
            self.name
        )
    }

    /// A DSN over TCP to `host` (`localhost`, the name the certificate has, or `127.0.0.1`)
    /// as the superuser with its password, with `sslmode` and the harness's CA.
    pub fn tcp_dsn(&self, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@{host}:{}/{}?sslmode={sslmode}\
             &sslrootcert={}",
            self.port,
            self.name,
            encode(&self.ca_file.to_string_lossy())
        )
    }

    /// A DSN through another address (a [`crate::test_support::CutProxy`]) to this database.
    pub fn dsn_via(&self, port: u16) -> String {
        format!(
            "postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/{}?sslmode=disable",
            self.name
        )
    }
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Server {
    /// Starts a server of its own (stopped when dropped): for tests that stop or restart it.
    pub fn start() -> Server {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("flopmeter-pg-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL")
            .keep();
        let as_postgres = if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 {
            let meta = postgres_user();
            std::os::unix::fs::chown(&dir, Some(meta.0), Some(meta.1))
                .expect("chown the PostgreSQL test directory");
            Some(meta)
        } else {
            None
        };
        let mut server = Server {
            data: dir.join("data"),
            dir,
            bin,
            port: 0,
            as_postgres,
            ca_file: PathBuf::new(),
            ca_pem: String::new(),
            next_db: AtomicU64::new(1),
        };
        server.watchdog();
        server.init();
        server.start_on_free_port();
        server
    }

    fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write a PostgreSQL test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        if let Some((uid, gid)) = self.as_postgres {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        }
        path
    }

    fn init(&mut self) {
        let pwfile = self.write("pwfile", SUPERUSER_PASSWORD, 0o600);
        let out = self
            .program("initdb")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The server's certificate names `localhost` only, so that connecting to 127.0.0.1
        // with verify-full is a name mismatch the tests can provoke.
        let ca = DevCa::generate(30).expect("development CA");
        let mut spec = LeafSpec::collector(&[]);
        spec.ips.clear();
        spec.dns_names = vec!["localhost".into()];
        let leaf = ca.issue(&spec).expect("server certificate");
        let cert = self.write("server.crt", &leaf.cert_pem, 0o644);
        let key = self.write("server.key", &leaf.key_pem, 0o600);
        self.ca_file = self.write("ca.pem", &ca.cert_pem, 0o644);
        self.ca_pem = ca.cert_pem;
        let extra = format!(
            "\n# flopmeter test harness\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n\
             max_connections = 200\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             shared_buffers = 32MB\n\
             log_min_messages = warning\nlog_min_error_statement = panic\n",
            dir = self.dir.display(),
            cert = cert.display(),
            key = key.display(),
        );
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&extra);
        fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// A port nobody listens on now; the server may still lose a race for it, so
    /// [`Server::start_on_free_port`] retries.
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
    }

    fn start_on_free_port(&mut self) {
        for _ in 0..5 {
            self.port = Self::free_port();
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) if log.contains("could not bind") || log.contains("in use") => continue,
                Err(log) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        panic!("PostgreSQL lost the race for a free port five times");
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.dir.join("server.log");
        let status = self
            .program("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        if status.success() {
            Ok(())
        } else {
            Err(fs::read_to_string(&log).unwrap_or_default())
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let out = self
            .program("pg_ctl")
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server (fast shutdown: sessions are ended, transactions rolled back).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-m", "fast"]);
    }

    /// Starts the stopped server again, on the same port.
    pub fn start_again(&self) {
        if let Err(log) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again:\n{log}");
        }
    }

    /// Restarts the server: every connection breaks, the data stays.
    pub fn restart(&self) {
        // Not `pg_ctl restart`: without `-l` the new postmaster would keep pg_ctl's stdout,
        // and this process would wait on that pipe forever.
        self.stop();
        self.start_again();
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The CA that signed the server's certificate: its file and PEM.
    pub fn ca(&self) -> (&Path, &str) {
        (&self.ca_file, &self.ca_pem)
    }

    /// Runs SQL as the superuser in database `postgres` (roles, databases, settings).
    pub fn admin(&self, sql: &str) {
        self.admin_in("postgres", sql);
    }

    /// Runs SQL as the superuser in `database`.
    pub fn admin_in(&self, database: &str, sql: &str) {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(SUPERUSER)
            .dbname(database);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the harness");
        runtime.block_on(async {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL over its socket");
            let conn = tokio::spawn(connection);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("harness SQL {sql:?} failed: {e:?}"));
            drop(client);
            let _ = conn.await;
        });
    }

    /// Creates an empty database for one test.
    pub fn fresh_database(&self) -> TestDatabase {
        let name = format!("test_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.admin(&format!("CREATE DATABASE {name} TEMPLATE template0"));
        TestDatabase {
            name,
            socket_dir: self.dir.clone(),
            port: self.port,
            ca_file: self.ca_file.clone(),
        }
    }

    /// One of the server's programs, as the `postgres` OS user if the tests run as root.
    fn program(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        match self.as_postgres {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    /// A process that outlives nothing: once this test process is gone (however it ended),
    /// it stops the server at once and deletes the directory.
    fn watchdog(&self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let runuser = if self.as_postgres.is_some() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -d '{data}' ]; then {runuser}'{pg_ctl}' stop -D '{data}' -m immediate; fi; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data.display(),
            pg_ctl = pg_ctl.display(),
            dir = self.dir.display(),
        );
        // In a session of its own, so that a kill of the test's process group (Ctrl-C, a
        // timeout killing the tree) leaves it alive to clean up.
        // `-f` forks, so setsid itself exits at once and leaves no zombie behind.
        let started = Command::new("setsid")
            .args(["-f", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the PostgreSQL watchdog");
        assert!(
            started.success(),
            "setsid could not start the PostgreSQL watchdog"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self
            .program("pg_ctl")
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian keeps initdb and pg_ctl off the
/// PATH), or `$PG_BINDIR`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server programs are not installed (no /usr/lib/postgresql/*/bin/\
             initdb): run scripts/install-test-deps, or set PG_BINDIR"
        )
    })
}

/// The `postgres` OS user's uid and gid, from `id`.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!(
                    "the tests run as root and initdb refuses root, but there is no \
                     `postgres` user: install Debian's postgresql (scripts/install-test-deps)"
                )
            })
    };
    (id("-u"), id("-g"))
}
