//! Data as users have it, through `flint run` on 2 executors: CSV matched by header name
//! with `NA` holes, dialects and quoted line breaks; Parquet of every codec written by
//! pyarrow; compressed text and CSV; Spark's save modes and Hive-style partitioned
//! output read back. Every expected value is computed here from the rows the test made.
//!
//! pyarrow writes the Parquet and compressed files, so that they come from another
//! implementation than Flint's; `.ci/run` installs it.

use crate::cluster::Rng;
use crate::util::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A flight as the files hold it: eleven columns, of which the job reads four.
#[derive(Clone)]
struct Flight {
    year: i64,
    month: i64,
    carrier: String,
    dep_delay: Option<i64>,
    tailnum: Option<String>,
    distance: i64,
}

const CARRIERS: [&str; 5] = ["UA", "AA", "B6", "DL", "EV"];
const HEADER: &str =
    "year,month,day,dep_time,dep_delay,carrier,flight,tailnum,origin,dest,distance";

/// `n` flights; `dep_delay` is first missing at row `first_na`, then every 7th row.
fn flights(n: usize, first_na: usize, seed: u64) -> Vec<Flight> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| Flight {
            year: 2013 + (i % 2) as i64,
            month: rng.range(1, 12) as i64,
            carrier: CARRIERS[rng.range(0, 4) as usize].to_string(),
            dep_delay: (i < first_na || i % 7 != 0).then(|| rng.range(0, 200) as i64 - 20),
            tailnum: (i % 11 != 3).then(|| format!("N{}", rng.range(0, 900) + 100)),
            distance: 100 + rng.range(0, 4000) as i64,
        })
        .collect()
}

/// The cells of flight `i`, in the order of [`HEADER`].
fn cells(f: &Flight, i: usize) -> Vec<String> {
    vec![
        f.year.to_string(),
        f.month.to_string(),
        (1 + i % 28).to_string(),
        (500 + i % 1000).to_string(),
        f.dep_delay.map_or("NA".into(), |d| d.to_string()),
        f.carrier.clone(),
        (1000 + i % 500).to_string(),
        f.tailnum.clone().unwrap_or("NA".into()),
        "EWR".into(),
        "IAH".into(),
        f.distance.to_string(),
    ]
}

fn csv_line(f: &Flight, i: usize) -> String {
    cells(f, i).join(",") + "\n"
}

fn write_csv(path: &Path, rows: &[Flight]) {
    let mut text = format!("{HEADER}\n");
    for (i, f) in rows.iter().enumerate() {
        text.push_str(&csv_line(f, i));
    }
    std::fs::write(path, text).unwrap();
}

/// The `stats` lines the `io` test job prints, computed here.
fn stats(rows: &[Flight]) -> Vec<String> {
    let mut by: BTreeMap<&str, (u64, i64, u64, i64, i64)> = BTreeMap::new();
    for f in rows {
        let e = by.entry(&f.carrier).or_default();
        e.0 += 1;
        e.1 += f.dep_delay.unwrap_or(0);
        e.2 += u64::from(f.dep_delay.is_none());
        e.3 += f.distance;
        e.4 += f.year;
    }
    by.into_iter()
        .map(|(c, (rows, delay, nulls, distance, years))| {
            format!(
                "stats carrier={c:?} rows={rows} delay_sum={delay} delay_nulls={nulls} distance_sum={distance} year_sum={years}"
            )
        })
        .collect()
}

/// Runs the `io` test job on 2 executors; its `stats`/`text` lines.
fn io(args: &[&str]) -> Vec<String> {
    let out = run_ok(&mut io_cmd(args));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("stats ") || l.starts_with("text "))
        .map(str::to_string)
        .collect()
}

fn io_cmd(args: &[&str]) -> Command {
    let mut cmd = flint();
    cmd.args(["run", flint_udfs::TEST_JOBS, "--executors", "2", "--", "io"]);
    cmd.args(args);
    cmd
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a Python script with pyarrow; `false` (and SKIPPED) when pyarrow is missing.
fn pyarrow(script: &str) -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: pyarrow is not installed (.ci/run installs it)");
        return false;
    }
    python3(script);
    true
}

/// Runs a Python script; its standard output.
fn python3(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn csv_columns_match_by_header_name_with_na_holes_and_a_late_first_na() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("flights");
    std::fs::create_dir(&dir).unwrap();
    // The first NA of dep_delay comes after the rows inference samples.
    let a = flights(6000, 4500, 1);
    let b = flights(3000, 0, 2);
    write_csv(&dir.join("a.csv"), &a);
    write_csv(&dir.join("b.csv"), &b);
    let all: Vec<Flight> = a.iter().chain(&b).cloned().collect();
    assert_eq!(io(&["csv", s(&dir)]), stats(&all));

    let out = run_ok(&mut io_cmd(&["csv", s(&dir), "inferred"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("inferred the CSV schema of")
            && stderr.contains("dep_delay: Int64")
            && stderr.contains("tailnum: Utf8"),
        "the inferred schema is printed: {stderr}"
    );
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("stats "))
        .map(str::to_string)
        .collect();
    assert_eq!(got, stats(&all));
    // The same sums through a frame's columnar group-by of the CSV (types inferred,
    // `NA` holes null, the carrier a plain text column).
    assert_eq!(io(&["frame-csv", s(&dir)]), stats(&all));

    // Other null values: with only `-` a null, `NA` is not a number.
    let err = run_err(&mut io_cmd(&["csv", s(&dir.join("a.csv")), "nulls=-"]));
    assert!(
        err.contains("a.csv:")
            && err.contains("column `dep_delay`: \"NA\" is not a value of type Int64"),
        "{err}"
    );
}

#[test]
fn csv_errors_name_file_line_and_column_and_are_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("flights.csv");
    let rows = flights(50, 0, 3);
    let mut text = format!("{HEADER}\n");
    for (i, f) in rows.iter().enumerate() {
        let mut c = cells(f, i);
        if i == 6 {
            c[4] = "soon".into(); // line 8 of the file: a delay that is no number
        }
        text.push_str(&(c.join(",") + "\n"));
    }
    std::fs::write(&path, text).unwrap();
    let err = run_err(&mut io_cmd(&["csv", s(&path)]));
    assert!(
        err.contains("flights.csv:8: malformed CSV record: column `dep_delay`: \"soon\" is not a value of type Int64"),
        "{err}"
    );
    assert!(
        err.contains("another attempt would fail the same way"),
        "{err}"
    );

    let err = run_err(&mut io_cmd(&["missing", s(&path)]));
    assert!(
        err.contains("flights.csv: the row type's column `no_such_column` is not in the file's header (its columns: year, month, day"),
        "{err}"
    );
    assert!(
        err.contains("another attempt would fail the same way"),
        "{err}"
    );
}

/// Writes `dir/dates.csv` (and `bad.csv`, whose line 1,501 has a day that is no date)
/// with Python's `datetime`, which also prints the `dates` lines the job must print for
/// each: all rows, and `bad.csv` without its bad row.
fn dated_csv(dir: &Path) -> (String, String) {
    let script = format!(
        r#"
import calendar, datetime as dt
def rows(n, bad):
    out, keep = [], []
    base = dt.datetime(2012, 12, 30, 23, 50)
    for i in range(n):
        at = base + dt.timedelta(minutes=97 * i)
        tz = dt.timezone(dt.timedelta(minutes=60 * (i % 5) - 120))
        zoned = (base + dt.timedelta(hours=5 * i)).replace(tzinfo=tz)
        day = (base + dt.timedelta(days=i % 400)).date()
        day_cell = day.strftime("%m/%d/%Y") if i != bad else "13/45/2013"
        at_cell = "NA" if i % 7 == 3 else at.strftime("%Y-%m-%d %H:%M")
        out.append(f"{{i}},{{zoned.strftime('%d/%m/%Y %H:%M %z')}},{{at_cell}},x{{i}},{{day_cell}}")
        if i != bad:
            keep.append((day, None if i % 7 == 3 else at, zoned))
    return out, keep
def expect(keep):
    days = sum(d.toordinal() for d, _, _ in keep)
    at_sum = sum(calendar.timegm(a.timetuple()) for _, a, _ in keep if a is not None)
    nulls = sum(1 for _, a, _ in keep if a is None)
    zoned = sum(int(z.timestamp()) for _, _, z in keep)
    return f"dates rows={{len(keep)}} days={{days}} at_sum={{at_sum}} at_nulls={{nulls}} zoned_sum={{zoned}}"
for name, bad in [("dates.csv", -1), ("bad.csv", 1499)]:
    lines, keep = rows(3000, bad)
    with open(r"{dir}/" + name, "w") as f:
        f.write("id,zoned,at,note,day\n" + "\n".join(lines) + "\n")
    print(expect(keep))
"#,
        dir = dir.display()
    );
    let text = python3(&script);
    let mut lines = text.lines().map(str::to_string);
    (lines.next().unwrap(), lines.next().unwrap())
}

#[test]
fn csv_dates_and_timestamps_are_read_through_per_column_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let (all, without_bad) = dated_csv(tmp.path());
    let formats = [
        "date=day@%m/%d/%Y",
        "date=at@%Y-%m-%d %H:%M",
        "date=zoned@%d/%m/%Y %H:%M %z",
    ];
    let dates = |out: std::process::Output| -> String {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("dates "));
        line.unwrap_or_else(|| panic!("no dates line in {text}"))
            .to_string()
    };
    let file = tmp.path().join("dates.csv");
    let mut args = vec!["dates", s(&file)];
    args.extend(formats);
    assert_eq!(dates(run_ok(&mut io_cmd(&args))), all);
    // Inferred schemas read a dated column as text, so the formats apply the same.
    args.push("inferred");
    assert_eq!(dates(run_ok(&mut io_cmd(&args))), all);

    // A day that is no date: the file, its line and the column, not retried; dropped
    // with `drop`, every other row kept.
    let bad = tmp.path().join("bad.csv");
    let mut args = vec!["dates", s(&bad)];
    args.extend(formats);
    let err = run_err(&mut io_cmd(&args));
    assert!(
        err.contains("bad.csv:1501: malformed CSV record: column `day`: \"13/45/2013\" does not match its date format \"%m/%d/%Y\""),
        "{err}"
    );
    assert!(
        err.contains("another attempt would fail the same way"),
        "{err}"
    );
    args.push("drop");
    assert_eq!(dates(run_ok(&mut io_cmd(&args))), without_bad);

    // A format chrono cannot read is refused with the plan, before any task.
    let err = run_err(&mut io_cmd(&["dates", s(&file), "date=day@%m/%Q"]));
    assert!(
        err.contains("the csv date format \"%m/%Q\" of column `day` is not a strftime format"),
        "{err}"
    );
    // Without a format the cells are not ISO, and the row type cannot read them: the
    // column and its cell are named, and the task is not retried.
    let err = run_err(&mut io_cmd(&["dates", s(&file), formats[1], formats[2]]));
    assert!(
        err.contains("column `day` \"") && err.contains("another attempt would fail the same way"),
        "{err}"
    );
}

#[test]
fn quoted_line_breaks_comments_and_other_dialects() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(400, 0, 4);
    // Carriers quoted, some with a line break and an escaped quote inside, `;` between
    // fields, `#` comments, a quote escaped by a backslash.
    let mut text = String::from("# exported flights\n");
    text.push_str(&HEADER.replace(',', ";"));
    text.push('\n');
    let mut expected = Vec::new();
    for (i, f) in rows.iter().enumerate() {
        let mut f = f.clone();
        let quoted = if i % 3 == 0 {
            f.carrier = format!("{}\nline \"two\"", f.carrier);
            format!("\"{}\"", f.carrier.replace('"', "\\\""))
        } else {
            format!("\"{}\"", f.carrier)
        };
        if i % 50 == 0 {
            text.push_str("# a comment\n");
        }
        let mut c = cells(&f, i);
        c[5] = quoted;
        text.push_str(&(c.join(";") + "\n"));
        expected.push(f);
    }
    let path = tmp.path().join("dialect.csv");
    std::fs::write(&path, text).unwrap();
    let got = io(&[
        "csv",
        s(&path),
        "multi-line",
        "semicolon",
        "hash-comments",
        "backslash",
    ]);
    assert_eq!(got, stats(&expected));
}

#[test]
fn parquet_of_every_codec_written_by_pyarrow_reads_back_equal() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(20_000, 100, 5);
    let csv = tmp.path().join("flights.csv");
    write_csv(&csv, &rows);
    let dir = tmp.path().join("pq");
    std::fs::create_dir(&dir).unwrap();
    let codecs = ["snappy", "zstd", "gzip", "lz4", "brotli", "none"];
    let script = format!(
        r#"
import pyarrow.csv as pc, pyarrow.parquet as pq
t = pc.read_csv({csv:?}, convert_options=pc.ConvertOptions(null_values=["NA"], strings_can_be_null=True))
for codec in {codecs:?}:
    pq.write_table(t, {dir:?} + "/" + codec + ".parquet", compression=codec, row_group_size=3000)
"#,
        csv = s(&csv),
        dir = s(&dir),
    );
    if !pyarrow(&script) {
        return;
    }
    let want = stats(&rows);
    for codec in codecs {
        let file = dir.join(format!("{codec}.parquet"));
        assert_eq!(io(&["parquet", s(&file)]), want, "{codec}");
    }
    // The same sums through a frame's columnar group-by (the carrier column arrives as
    // a dictionary: pyarrow writes text with one).
    let zstd = dir.join("zstd.parquet");
    assert_eq!(io(&["frame", s(&zstd)]), want, "frame");
}

#[test]
fn gzip_zstd_and_bzip2_inputs_are_read_through_their_codecs() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(5000, 10, 6);
    let csv = tmp.path().join("plain.csv");
    write_csv(&csv, &rows);
    let text: String = (0..20_000)
        .map(|i| format!("line {i} of the log\n"))
        .collect();
    let txt = tmp.path().join("log.txt");
    std::fs::write(&txt, &text).unwrap();
    let logs = tmp.path().join("logs");
    let flights_dir = tmp.path().join("flights");
    std::fs::create_dir(&logs).unwrap();
    std::fs::create_dir(&flights_dir).unwrap();
    let script = format!(
        r#"
import pyarrow as pa
for src, dst in [({txt:?}, {logs:?}), ({csv:?}, {fl:?})]:
    data = open(src, "rb").read()
    name = src.rsplit("/", 1)[1]
    for codec, ext in [("gzip", "gz"), ("zstd", "zst"), ("bz2", "bz2")]:
        with pa.CompressedOutputStream(dst + "/" + name + "." + ext, codec) as out:
            out.write(data)
"#,
        txt = s(&txt),
        logs = s(&logs),
        csv = s(&csv),
        fl = s(&flights_dir),
    );
    if !pyarrow(&script) {
        return;
    }
    let bytes: usize = text.lines().map(str::len).sum();
    assert_eq!(
        io(&["text", s(&logs)]),
        [format!("text lines={} bytes={}", 3 * 20_000, 3 * bytes)]
    );
    let three: Vec<Flight> = rows.iter().chain(&rows).chain(&rows).cloned().collect();
    assert_eq!(io(&["csv", s(&flights_dir)]), stats(&three));
}

/// Files under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn parquet_file(path: &Path) -> parquet::file::metadata::ParquetMetaData {
    use parquet::file::reader::FileReader;
    let f = std::fs::File::open(path).unwrap();
    parquet::file::reader::SerializedFileReader::new(f)
        .unwrap()
        .metadata()
        .clone()
}

#[test]
fn partitioned_parquet_is_written_hive_style_and_read_back_with_its_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(8000, 0, 7);
    let csv = tmp.path().join("flights.csv");
    write_csv(&csv, &rows);
    let out = tmp.path().join("out");
    io(&[
        "save",
        "parquet",
        "error",
        "snappy",
        "year,carrier",
        s(&csv),
        s(&out),
    ]);
    let files = tree(&out);
    assert!(files.contains(&"_SUCCESS".to_string()), "{files:?}");
    for f in files.iter().filter(|f| *f != "_SUCCESS") {
        let (dirs, name) = f.rsplit_once('/').unwrap();
        let (year, carrier) = dirs.split_once('/').unwrap();
        assert!(year == "year=2013" || year == "year=2014", "{f}");
        assert!(
            CARRIERS.iter().any(|c| carrier == format!("carrier={c}")),
            "{f}"
        );
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "{f}"
        );
        let md = parquet_file(&out.join(f));
        let columns: Vec<String> = md
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.name().to_string())
            .collect();
        assert_eq!(
            columns,
            ["distance", "dep_delay"],
            "the partition columns are in the path"
        );
        assert_eq!(
            md.row_group(0).column(0).compression(),
            parquet::basic::Compression::SNAPPY
        );
    }
    assert_eq!(io(&["parquet", s(&out)]), stats(&rows), "columns restored");

    // The default codec is zstd.
    let plain = tmp.path().join("plain");
    io(&["save", "parquet", "error", "-", "-", s(&csv), s(&plain)]);
    let first = parts(&plain).into_iter().next().unwrap();
    assert!(matches!(
        parquet_file(&first).row_group(0).column(0).compression(),
        parquet::basic::Compression::ZSTD(_)
    ));
}

#[test]
fn save_modes_error_ignore_append_and_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(3000, 0, 8);
    let more = flights(1000, 0, 9);
    let (csv, csv2) = (tmp.path().join("a.csv"), tmp.path().join("b.csv"));
    write_csv(&csv, &rows);
    write_csv(&csv2, &more);
    let out = tmp.path().join("out");
    let save = |mode: &str, input: &Path| {
        io_cmd(&["save", "csv", mode, "gzip", "carrier", s(input), s(&out)])
    };
    run_ok(&mut save("error", &csv));
    assert!(
        tree(&out)
            .iter()
            .all(|f| f == "_SUCCESS" || f.ends_with(".csv.gz"))
    );
    assert_eq!(io(&["csv", s(&out)]), stats(&rows));
    let err = run_err(&mut save("error", &csv2));
    assert!(err.contains("already exists and is not empty"), "{err}");
    run_ok(&mut save("ignore", &csv2));
    assert_eq!(io(&["csv", s(&out)]), stats(&rows), "ignore leaves it");
    run_ok(&mut save("append", &csv2));
    let both: Vec<Flight> = rows.iter().chain(&more).cloned().collect();
    assert_eq!(io(&["csv", s(&out)]), stats(&both), "append adds");
    run_ok(&mut save("overwrite", &csv2));
    assert_eq!(io(&["csv", s(&out)]), stats(&more), "overwrite replaces");
    // Nothing is left beside the output.
    let beside: Vec<PathBuf> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // JSON lines, zstd, partitioned by an integer column.
    let json = tmp.path().join("json");
    io(&["save", "json", "error", "zstd", "year", s(&csv), s(&json)]);
    assert!(
        tree(&json)
            .iter()
            .any(|f| f.starts_with("year=2014/") && f.ends_with(".jsonl.zst"))
    );
    assert_eq!(io(&["json", s(&json)]), stats(&rows));
}

/// A moto S3 server on a free loopback port, killed when dropped.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    /// `None` (and SKIPPED) when moto's server is not installed.
    fn start() -> Option<S3Server> {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIPPED: moto's server is not installed (.ci/run installs it)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not listen in 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(server)
    }

    /// Sets the AWS environment that points `cmd` (a process) at this server.
    fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ALLOW_HTTP", "true")
    }

    /// Runs a Python script with boto3 client `s3` bound to this server.
    fn python(&self, script: &str) {
        self.python_out(script);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_inputs_are_listed_and_read_by_ranges_like_local_files() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Big enough for several splits per file: ranged reads start inside the objects.
    let a = flights(30_000, 0, 10);
    let b = flights(8_000, 0, 11);
    let (fa, fb) = (tmp.path().join("a.csv"), tmp.path().join("b.csv"));
    write_csv(&fa, &a);
    write_csv(&fb, &b);
    let pq = tmp.path().join("f.parquet");
    let wrote_parquet = pyarrow(&format!(
        r#"
import pyarrow.csv as pc, pyarrow.parquet as pq
t = pc.read_csv({fa:?}, convert_options=pc.ConvertOptions(null_values=["NA"], strings_can_be_null=True))
pq.write_table(t, {pq:?}, compression="zstd", row_group_size=4000)
"#,
        fa = s(&fa),
        pq = s(&pq),
    ));
    s3.python(&format!(
        r#"
import gzip, os
s3.create_bucket(Bucket="lake")
s3.upload_file({fa:?}, "lake", "flights/a.csv")
s3.put_object(Bucket="lake", Key="flights/b.csv.gz", Body=gzip.compress(open({fb:?}, "rb").read()))
s3.put_object(Bucket="lake", Key="flights/_SUCCESS", Body=b"")
s3.put_object(Bucket="lake", Key="flights/.hidden.csv", Body=b"not,a,flight\n")
if os.path.exists({pq:?}):
    s3.upload_file({pq:?}, "lake", "pq/f.parquet")
"#,
        fa = s(&fa),
        fb = s(&fb),
        pq = s(&pq),
    ));
    let io_s3 = |args: &[&str]| {
        let mut cmd = io_cmd(args);
        s3.env(&mut cmd);
        cmd
    };
    // One object, split: ranged reads start inside it.
    let one = run_ok(&mut io_s3(&["csv", "s3://lake/flights/a.csv"]));
    assert_eq!(
        stats_of(one),
        stats(&a),
        "one object, read in ranged splits"
    );
    // A prefix as a directory: the plain object split, the gzip one read whole,
    // `_SUCCESS` and dot files skipped.
    let all: Vec<Flight> = a.iter().chain(&b).cloned().collect();
    let dir = run_ok(&mut io_s3(&["csv", "s3://lake/flights/"]));
    assert_eq!(stats_of(dir), stats(&all), "a prefix read as a directory");

    let glob = run_ok(&mut io_s3(&["csv", "s3://lake/flights/*.csv"]));
    assert_eq!(
        stats_of(glob),
        stats(&a),
        "a glob over a prefix: the hidden file is not read"
    );

    if wrote_parquet {
        let out = run_ok(&mut io_s3(&["parquet", "s3://lake/pq/f.parquet"]));
        assert_eq!(
            stats_of(out),
            stats(&a),
            "Parquet footer and row groups by ranged reads"
        );
    }

    let err = run_err(&mut io_s3(&["csv", "s3://lake/nothing/here"]));
    assert!(
        err.contains("s3://lake/nothing/here does not exist"),
        "{err}"
    );
    let err = run_err(&mut io_s3(&["csv", "s3://lake/flights/../etc"]));
    assert!(err.contains("is not a usable object URL"), "{err}");

    // Credentials, region and endpoint from the operator's AWS profile files instead of
    // the environment: without them the job would find no credentials and no server.
    let aws = tmp.path().join("home/.aws");
    std::fs::create_dir_all(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n[lake]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    std::fs::write(
        aws.join("config"),
        format!(
            "[profile lake]\nregion = us-east-1\nendpoint_url = {}\n",
            s3.endpoint
        ),
    )
    .unwrap();
    let profiled = |profile: &str| {
        let mut cmd = io_cmd(&["csv", "s3://lake/flights/a.csv"]);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT",
            "AWS_ALLOW_HTTP",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("HOME", tmp.path().join("home"))
            .env("AWS_PROFILE", profile);
        cmd
    };
    assert_eq!(
        stats_of(run_ok(&mut profiled("lake"))),
        stats(&a),
        "read with the `lake` profile"
    );
    let err = run_err(&mut profiled("nope"));
    assert!(
        err.contains("AWS_PROFILE is \"nope\", but neither"),
        "{err}"
    );
}

/// An object as boto3 lists it.
#[derive(Debug)]
struct Object {
    key: String,
    size: u64,
}

impl S3Server {
    /// `cmd` with the AWS environment of this server.
    fn command(&self, mut cmd: Command) -> Command {
        self.env(&mut cmd);
        cmd
    }

    /// Runs a Python script with boto3 client `s3`; its standard output.
    fn python_out(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n",
            self.endpoint
        );
        python3(&(prelude + script))
    }

    /// The objects under `prefix` of bucket `lake`, by key.
    fn objects(&self, prefix: &str) -> Vec<Object> {
        let out = self.python_out(&format!(
            r#"
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix={prefix:?}):
    for o in page.get("Contents", []):
        print(o["Key"], o["Size"])
"#
        ));
        let mut objects: Vec<Object> = out
            .lines()
            .map(|l| {
                let mut w = l.split(' ');
                Object {
                    key: w.next().unwrap().to_string(),
                    size: w.next().unwrap().parse().unwrap(),
                }
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects
    }

    /// The file names a `_SUCCESS` manifest lists, relative to its directory.
    fn manifest(&self, dir: &str) -> Vec<String> {
        let out = self.python_out(&format!(
            r#"
m = json.loads(s3.get_object(Bucket="lake", Key={:?})["Body"].read())
assert m["committer"] == "flint", m
for f in m["files"]:
    print(f)
"#,
            format!("{dir}/_SUCCESS")
        ));
        out.lines().map(str::to_string).collect()
    }

    /// Checks that `dir` is a committed output: its data objects are exactly what its
    /// manifest lists, and no attempt's object is left. Returns the data objects.
    fn committed(&self, dir: &str) -> Vec<Object> {
        let objects = self.objects(&format!("{dir}/"));
        let mut data: Vec<Object> = Vec::new();
        for o in objects {
            let rel = o.key[dir.len() + 1..].to_string();
            assert!(!rel.starts_with("_temporary/"), "left behind: {}", o.key);
            if rel != "_SUCCESS" {
                data.push(o);
            }
        }
        let names: Vec<String> = data
            .iter()
            .map(|o| o.key[dir.len() + 1..].to_string())
            .collect();
        assert_eq!(
            names,
            self.manifest(dir),
            "the manifest lists the data objects"
        );
        data
    }
}

fn stats_of(out: std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("stats "))
        .map(str::to_string)
        .collect()
}

/// Saves to object storage: attempts upload under `_temporary/` (by multipart upload
/// past 8 MiB), the job commit copies the winners and writes `_SUCCESS` as a manifest;
/// every save mode and a partitioned save read back; a failed job leaves nothing that a
/// reader sees.
#[test]
fn s3_saves_upload_by_parts_commit_by_manifest_and_read_back() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // About 13 MB of CSV, gzipped: one whole-file split, one JSON object of 17 MB.
    let a = flights(300_000, 0, 20);
    let b = flights(5_000, 0, 21);
    let (fa, fb, bad) = (
        tmp.path().join("a.csv"),
        tmp.path().join("b.csv"),
        tmp.path().join("bad.csv"),
    );
    write_csv(&fa, &a);
    write_csv(&fb, &b);
    std::fs::write(
        &bad,
        format!("{HEADER}\n2013,1,1,517,soon,UA,1,N1,EWR,IAH,100\n"),
    )
    .unwrap();
    s3.python(&format!(
        r#"
import gzip
s3.create_bucket(Bucket="lake")
# Versions keep the attempts' objects after the commit removes them, to be looked at.
s3.put_bucket_versioning(Bucket="lake", VersioningConfiguration={{"Status": "Enabled"}})
s3.put_object(Bucket="lake", Key="in/a.csv.gz", Body=gzip.compress(open({fa:?}, "rb").read(), 1))
s3.upload_file({fb:?}, "lake", "more/b.csv")
s3.upload_file({fb:?}, "lake", "bad/a.csv")
s3.upload_file({bad:?}, "lake", "bad/b.csv")
"#,
        fa = s(&fa),
        fb = s(&fb),
        bad = s(&bad),
    ));
    let io_s3 = |args: &[&str]| s3.command(io_cmd(args));

    // JSON lines, uncompressed: a round trip, its large objects uploaded in parts.
    run_ok(&mut io_s3(&[
        "save",
        "json",
        "error",
        "uncompressed",
        "-",
        "s3://lake/in/",
        "s3://lake/out/json",
    ]));
    let json = s3.committed("out/json");
    assert!(
        json.iter()
            .all(|o| o.key.starts_with("out/json/part-") && o.key.ends_with(".jsonl")),
        "{json:?}"
    );
    assert!(json.iter().any(|o| o.size > 8 << 20), "{json:?}");
    // The attempt's object, removed by the commit, went up in parts: an S3 ETag of a
    // multipart upload ends in `-<parts>`.
    let uploaded = s3.python_out(
        r#"
for v in s3.list_object_versions(Bucket="lake", Prefix="out/json/_temporary/").get("Versions", []):
    print(v["Size"], v["ETag"].strip('"'))
"#,
    );
    assert!(
        uploaded.lines().any(|l| l.ends_with("-3")),
        "no attempt went up in 3 parts: {uploaded}"
    );
    assert_eq!(
        stats_of(run_ok(&mut io_s3(&["json", "s3://lake/out/json"]))),
        stats(&a),
        "JSON read back from the bucket"
    );

    // Parquet partitioned by carrier, then every save mode on it.
    let pq = "s3://lake/out/pq";
    let save =
        |mode: &str, input: &str| io_s3(&["save", "parquet", mode, "zstd", "carrier", input, pq]);
    let read_pq = || stats_of(run_ok(&mut io_s3(&["parquet", pq])));
    run_ok(&mut save("error", "s3://lake/in/"));
    let first = s3.committed("out/pq");
    assert!(
        first
            .iter()
            .all(|o| o.key.starts_with("out/pq/carrier=") && o.key.ends_with(".parquet")),
        "{first:?}"
    );
    assert_eq!(read_pq(), stats(&a), "partitioned Parquet read back");
    let err = run_err(&mut save("error", "s3://lake/more/"));
    assert!(err.contains("already exists and is not empty"), "{err}");
    run_ok(&mut save("ignore", "s3://lake/more/"));
    assert_eq!(read_pq(), stats(&a), "ignore leaves it");
    run_ok(&mut save("append", "s3://lake/more/"));
    let both: Vec<Flight> = a.iter().chain(&b).cloned().collect();
    assert_eq!(read_pq(), stats(&both), "append adds");
    assert!(s3.committed("out/pq").len() > first.len());
    run_ok(&mut save("overwrite", "s3://lake/more/"));
    assert_eq!(read_pq(), stats(&b), "overwrite replaces");
    let replaced = s3.committed("out/pq");
    assert!(
        replaced
            .iter()
            .all(|o| first.iter().all(|f| f.key != o.key)),
        "an old file survived the overwrite: {replaced:?}"
    );

    // A job that fails on a bad record leaves nothing a reader sees.
    let err = run_err(&mut io_s3(&[
        "save",
        "csv",
        "error",
        "-",
        "-",
        "s3://lake/bad/",
        "s3://lake/out/failed",
    ]));
    assert!(err.contains("is not a value of type Int64"), "{err}");
    let left = s3.objects("out/failed/");
    assert!(
        left.iter()
            .all(|o| o.key.starts_with("out/failed/_temporary/")),
        "a failed job's objects are visible: {left:?}"
    );
    let err = run_err(&mut io_s3(&["csv", "s3://lake/out/failed"]));
    assert!(err.contains("does not exist"), "{err}");
}

/// The files below `dir` whose names contain `part`.
fn find_files(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out
}

/// SIGKILLs at the worst moments of a save to object storage: an executor while it
/// writes a part (the job finishes on the other; the output has each row once), and the
/// whole `flint run` while its tasks upload (nothing visible; the next save there works).
#[test]
fn s3_saves_survive_a_killed_executor_and_a_killed_job_leaves_nothing_visible() {
    use crate::cluster::{FAST_FAILURE_DETECTION, ProcCluster, wait_child};
    use std::time::{Duration, Instant};
    let Some(s3) = S3Server::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Eight objects of 20,000 rows: eight tasks of about a second each.
    let mut all = Vec::new();
    let mut upload = String::from("s3.create_bucket(Bucket=\"lake\")\n");
    for i in 0..8 {
        let rows = flights(20_000, 0, 30 + i);
        let f = tmp.path().join(format!("{i}.csv"));
        write_csv(&f, &rows);
        upload.push_str(&format!(
            "s3.upload_file({:?}, \"lake\", \"in/{i}.csv\")\n",
            s(&f)
        ));
        all.extend(rows);
    }
    s3.python(&upload);

    let mut cluster = ProcCluster::start_with(
        tmp.path(),
        "127.0.0.1:0",
        FAST_FAILURE_DETECTION,
        |mut c| {
            s3.env(&mut c);
            c
        },
    );
    let ids: Vec<u32> = (0..2)
        .map(|_| {
            cluster.add_executor_with("127.0.0.1:0", FAST_FAILURE_DETECTION, |mut c| {
                s3.env(&mut c);
                c
            })
        })
        .collect();
    let summary = tmp.path().join("summary.json");
    let args = [
        "io",
        "save-slow",
        "csv",
        "error",
        "-",
        "-",
        "s3://lake/in/",
        "s3://lake/out/survived",
    ];
    let args: Vec<&Path> = args.iter().map(Path::new).collect();
    let job = cluster.submit(flint_udfs::TEST_JOBS, &[], &args, &summary);
    // Executor k works in work-k; a task writing an object spools it there.
    let end = Instant::now() + Duration::from_secs(300);
    let victim = loop {
        if let Some(i) = (0..2).find(|&i| {
            !find_files(&tmp.path().join(format!("work-{}", i + 1)), ".upload-").is_empty()
        }) {
            break i;
        }
        assert!(Instant::now() < end, "no executor wrote a part");
        std::thread::sleep(Duration::from_millis(10));
    };
    cluster.kill(ids[victim]);
    let (ok, _, stderr) = wait_child(job, Duration::from_secs(600));
    assert!(ok, "job failed: {stderr}\n{}", cluster.driver_log());
    let parts = s3.committed("out/survived");
    assert_eq!(parts.len(), 8, "one object per partition: {parts:?}");
    assert_eq!(
        stats_of(run_ok(
            &mut s3.command(io_cmd(&["csv", "s3://lake/out/survived"]))
        )),
        stats(&all),
        "every row once"
    );
    let spools = find_files(&tmp.path().join(format!("work-{}", 2 - victim)), ".upload-");
    assert!(spools.is_empty(), "spool files left: {spools:?}");

    // The whole job SIGKILLed once its first objects are up.
    let out = "s3://lake/out/killed";
    let mut run = s3.command(io_cmd(&[
        "save-slow",
        "csv",
        "error",
        "-",
        "-",
        "s3://lake/in/",
        out,
    ]));
    let mut child = run
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    s3.python(
        r#"
import time
deadline = time.time() + 300
while not s3.list_objects_v2(Bucket="lake", Prefix="out/killed/_temporary/").get("Contents"):
    assert time.time() < deadline, "no attempt uploaded"
    time.sleep(0.02)
"#,
    );
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the job finished before it was killed");
    let left = s3.objects("out/killed/");
    assert!(!left.is_empty());
    assert!(
        left.iter()
            .all(|o| o.key.starts_with("out/killed/_temporary/")),
        "a killed job's objects are visible: {left:?}"
    );
    let err = run_err(&mut s3.command(io_cmd(&["csv", out])));
    assert!(err.contains("does not exist"), "{err}");
    // Its leftovers are no output: saving there again works, and reads back whole.
    run_ok(&mut s3.command(io_cmd(&[
        "save",
        "csv",
        "error",
        "-",
        "-",
        "s3://lake/in/",
        out,
    ])));
    assert_eq!(
        stats_of(run_ok(&mut s3.command(io_cmd(&["csv", out])))),
        stats(&all)
    );
}

/// `filter_columns`: the host filters the rows; partition directories whose value fails
/// are never opened and Parquet row groups that statistics rule out are never read,
/// shown by making exactly what must be skipped unreadable.
#[test]
fn column_filters_skip_partitions_and_row_groups_and_filter_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = flights(12_000, 0, 40);
    let pick = |f: &dyn Fn(&Flight) -> bool| -> Vec<Flight> {
        rows.iter().filter(|r| f(r)).cloned().collect()
    };

    // CSV under year=…/ directories, with a year=2012 file that cannot be read.
    let by = tmp.path().join("by");
    for year in [2013, 2014] {
        let d = by.join(format!("year={year}"));
        std::fs::create_dir_all(&d).unwrap();
        let of_year: Vec<Flight> = rows.iter().filter(|f| f.year == year).cloned().collect();
        write_csv(&d.join("part-0.csv"), &of_year);
    }
    std::fs::create_dir_all(by.join("year=2012")).unwrap();
    std::fs::write(by.join("year=2012/part-0.csv"), "not,a,flight\n1,2,3\n").unwrap();
    let csv = |args: &[&str]| {
        let mut all = vec!["csv", s(&by)];
        all.extend(args);
        io(&all)
    };
    assert_eq!(
        csv(&["where=year:eq:2013"]),
        stats(&pick(&|f| f.year == 2013)),
        "the year=2012 directory is pruned, the year=2014 one too"
    );
    assert_eq!(
        csv(&["where=year:gt:2012", "where=carrier:eq:UA"]),
        stats(&pick(&|f| f.carrier == "UA")),
        "rows filtered by a file column"
    );
    assert_eq!(
        csv(&["where=year:ge:2013", "where=dep_delay:null"]),
        stats(&pick(&|f| f.dep_delay.is_none())),
        "only nulls pass is-null"
    );
    assert_eq!(
        csv(&["where=year:ge:2013", "where=dep_delay:ge:100.5"]),
        stats(&pick(&|f| f.dep_delay.is_some_and(|d| d as f64 >= 100.5))),
        "an integer column compared with a float"
    );
    let err = run_err(&mut io_cmd(&["csv", s(&by)]));
    assert!(
        err.contains("year=2012"),
        "unpruned, the bad file is read: {err}"
    );
    let err = run_err(&mut io_cmd(&[
        "csv",
        s(&by),
        "where=year:eq:2013",
        "where=nosuch:eq:1",
    ]));
    assert!(
        err.contains("the filter names column `nosuch`") && err.contains("part-0.csv"),
        "{err}"
    );
    let err = run_err(&mut io_cmd(&[
        "csv",
        s(&by),
        "where=year:eq:2013",
        "where=distance:eq:soon",
    ]));
    assert!(
        err.contains(
            "the filter's value \"soon\" is not a value of column `distance`'s type Int64"
        ) && err.contains("another attempt would fail the same way"),
        "{err}"
    );

    // Parquet by pyarrow, sorted by year: row groups of 2013 then of 2014, and the 2013
    // ones overwritten with garbage (the footer kept).
    let flat = tmp.path().join("all.csv");
    write_csv(&flat, &rows);
    let pq = tmp.path().join("f.parquet");
    if !pyarrow(&format!(
        r#"
import pyarrow.csv as pc, pyarrow.parquet as pq
t = pc.read_csv({flat:?}, convert_options=pc.ConvertOptions(null_values=["NA"], strings_can_be_null=True))
t = t.sort_by("year")
pq.write_table(t, {pq:?}, compression="zstd", row_group_size=3000)
md = pq.ParquetFile({pq:?}).metadata
assert md.num_row_groups == 4
with open({pq:?}, "r+b") as f:
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        year = rg.column(0).statistics
        if year.max != 2013:
            continue
        for c in range(rg.num_columns):
            col = rg.column(c)
            start = col.dictionary_page_offset if col.has_dictionary_page else col.data_page_offset
            f.seek(start)
            f.write(b"\xff" * col.total_compressed_size)
"#,
        flat = s(&flat),
        pq = s(&pq),
    )) {
        return;
    }
    let parquet = |args: &[&str]| {
        let mut all = vec!["parquet", s(&pq)];
        all.extend(args);
        io(&all)
    };
    assert_eq!(
        parquet(&["where=year:ge:2014"]),
        stats(&pick(&|f| f.year >= 2014)),
        "the 2013 row groups are not read"
    );
    assert_eq!(
        parquet(&["where=year:eq:2014", "where=month:le:6"]),
        stats(&pick(&|f| f.year == 2014 && f.month <= 6)),
        "a column the row type lacks filters too"
    );
    assert_eq!(
        parquet(&["where=year:gt:2013", "where=dep_delay:lt:0"]),
        stats(&pick(
            &|f| f.year == 2014 && f.dep_delay.is_some_and(|d| d < 0)
        )),
    );
    let err = run_err(&mut io_cmd(&["parquet", s(&pq)]));
    assert!(
        err.contains("row group"),
        "unpruned, the garbage is read: {err}"
    );
}
