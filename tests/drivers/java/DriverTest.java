// PgJDBC through PGHOST/PGPORT: SCRAM login, a PreparedStatement reused past
// prepareThreshold (a named server statement), batch insert, a portal read with
// setFetchSize (PortalSuspended), SQLSTATE 23505, rollback,
// CopyManager in/out, LISTEN/NOTIFY, Statement.cancel() from another thread, and TLS
// verify-full.  Exits non-zero at the first failed check.  Run by run.sh beside it.

import java.io.ByteArrayOutputStream;
import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;

public class DriverTest {
    static final String HOST = env("PGHOST");
    static final String PORT = env("PGPORT");
    static final String DB = env("PGDATABASE");
    static final String CA_FILE = env("SHUNT_CA_FILE");
    static final String TABLE = "t_jdbc_" + ProcessHandle.current().pid() + "_" + new Random().nextInt(1_000_000_000);
    static final List<Connection> conns = new ArrayList<>();

    static String env(String name) {
        String v = System.getenv(name);
        if (v == null || v.isEmpty()) {
            System.err.println("FAIL: " + name + " is not set (run through tests/integration/run.sh)");
            System.exit(2);
        }
        return v;
    }

    static class Failed extends RuntimeException {
        Failed(String m) { super(m); }
    }

    static void check(boolean cond, String what) {
        if (!cond) throw new Failed(what);
    }

    static void eq(Object got, Object want, String what) {
        if (got == null ? want != null : !got.equals(want))
            throw new Failed(what + ": got " + got + ", want " + want);
    }

    interface SqlAction { void run() throws Exception; }

    static SQLException expectSqlError(SqlAction a, String what) throws Exception {
        try {
            a.run();
        } catch (SQLException e) {
            return e;
        }
        throw new Failed("expected an SQLException: " + what);
    }

    static Connection connect(String host, String user, String password, Properties extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "5");
        p.setProperty("connectTimeout", "10");
        p.setProperty("socketTimeout", "60");
        if (extra != null) p.putAll(extra);
        Connection c = DriverManager.getConnection("jdbc:postgresql://" + host + ":" + PORT + "/" + DB, p);
        conns.add(c);
        return c;
    }

    static Connection connect() throws SQLException {
        return connect(HOST, "shunt_scram", "scram-secret", null);
    }

    static long scalarLong(Connection c, String q) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(q)) {
            check(rs.next(), "no row from " + q);
            return rs.getLong(1);
        }
    }

    static String scalarString(Connection c, String q) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(q)) {
            check(rs.next(), "no row from " + q);
            return rs.getString(1);
        }
    }

    static Connection c;

    // --- the steps ---

    static void scram() throws Exception {
        c = connect();
        eq(scalarString(c, "SELECT current_user"), "shunt_scram", "current_user");
        SQLException e = expectSqlError(() -> connect(HOST, "shunt_scram", "wrong", null), "wrong password");
        eq(e.getSQLState(), "28P01", "wrong password SQLSTATE (" + e.getMessage() + ")");
        try (Statement s = c.createStatement()) {
            s.execute("CREATE TABLE " + TABLE + " (id int PRIMARY KEY, v text, n numeric, ts timestamptz)");
        }
    }

    static void preparedReuse() throws Exception {
        Connection pc = connect(); // a fresh session: nothing prepared yet
        String marker = "m_jdbc_" + ProcessHandle.current().pid();
        try (PreparedStatement ps = pc.prepareStatement("SELECT ?::int * 2 AS " + marker + ", ?::text")) {
            PGStatement pgs = ps.unwrap(PGStatement.class);
            eq(pgs.getPrepareThreshold(), 5, "prepareThreshold");
            for (int i = 0; i < 12; i++) {
                ps.setInt(1, i);
                ps.setString(2, "s" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row");
                    eq(rs.getInt(1), i * 2, "prepared result");
                    eq(rs.getString(2), "s" + i, "prepared text");
                    check(!rs.next(), "more than one row");
                }
            }
            check(pgs.isUseServerPrepare(), "the statement was not server-prepared after 12 runs");
            long n = scalarLong(pc, "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%" + marker + "%'");
            eq(n, 1L, "named server statements with the marker");
        }
        // an insert statement reused, with an error in the middle
        try (PreparedStatement ins = pc.prepareStatement("INSERT INTO " + TABLE + " (id, v) VALUES (?, ?)")) {
            for (int i = 0; i < 10; i++) {
                ins.setInt(1, 100 + i);
                ins.setString(2, "prep");
                eq(ins.executeUpdate(), 1, "prepared insert count");
            }
            ins.setInt(1, 100);
            ins.setString(2, "dup");
            SQLException e = expectSqlError(ins::executeUpdate, "duplicate via prepared insert");
            eq(e.getSQLState(), "23505", "SQLSTATE");
            ins.setInt(1, 110);
            ins.setString(2, "prep");
            eq(ins.executeUpdate(), 1, "prepared insert after an error");
        }
        eq(scalarLong(c, "SELECT count(*) FROM " + TABLE + " WHERE v = 'prep'"), 11L, "prepared inserts");
    }

    static void batch() throws Exception {
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + TABLE + " (id, v, n) VALUES (?, ?, ?)")) {
            for (int i = 0; i < 500; i++) {
                ps.setInt(1, 1000 + i);
                ps.setString(2, "batch " + i);
                ps.setBigDecimal(3, new java.math.BigDecimal(i + ".25"));
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            eq(counts.length, 500, "executeBatch counts");
            for (int i = 0; i < counts.length; i++) eq(counts[i], 1, "executeBatch count " + i);
        }
        eq(scalarLong(c, "SELECT count(*) FROM " + TABLE + " WHERE v LIKE 'batch %'"), 500L, "batched rows");
        eq(scalarString(c, "SELECT sum(n) FROM " + TABLE + " WHERE v LIKE 'batch %'"), "124875.00", "batched sum");
    }

    /*
     * setFetchSize in a transaction: PgJDBC reads the result 100 rows at a time from a
     * named portal (Execute with a row limit, PortalSuspended, Execute again).
     */
    static void fetchSize() throws Exception {
        c.setAutoCommit(false);
        try (PreparedStatement ps = c.prepareStatement("SELECT g, repeat('r', g % 50) FROM generate_series(1, ?) AS g ORDER BY g")) {
            ps.setFetchSize(100);
            ps.setInt(1, 1050);
            long n = 0;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    n++;
                    eq((long) rs.getInt(1), n, "row in order");
                    eq(rs.getString(2).length(), (int) (n % 50), "row " + n + "'s text");
                }
            }
            eq(n, 1050L, "rows fetched 100 at a time");
            try (Statement s = c.createStatement()) {
                s.setFetchSize(7);
                ResultSet rs = s.executeQuery("SELECT count(*) FROM generate_series(1, 20)");
                rs.next();
                eq(rs.getLong(1), 20L, "a statement in the same transaction");
            }
            c.commit();
        } finally {
            c.setAutoCommit(true);
        }
    }

    static void errors() throws Exception {
        try (Statement s = c.createStatement()) {
            SQLException e = expectSqlError(() -> s.executeUpdate("INSERT INTO " + TABLE + " (id) VALUES (1000)"), "dup");
            eq(e.getSQLState(), "23505", "duplicate key SQLSTATE (" + e.getMessage() + ")");
            e = expectSqlError(() -> s.executeQuery("SELECT * FROM no_such_" + TABLE), "missing table");
            eq(e.getSQLState(), "42P01", "missing table SQLSTATE");
        }
        eq(scalarLong(c, "SELECT 7"), 7L, "after errors");
    }

    static void rollback() throws Exception {
        c.setAutoCommit(false);
        try (Statement s = c.createStatement()) {
            eq(s.executeUpdate("INSERT INTO " + TABLE + " (id, v) VALUES (200, 'tx'), (201, 'tx')"), 2, "insert count");
            eq(scalarLong(c, "SELECT count(*) FROM " + TABLE + " WHERE v = 'tx'"), 2L, "inside the transaction");
            c.rollback();
            eq(scalarLong(c, "SELECT count(*) FROM " + TABLE + " WHERE v = 'tx'"), 0L, "after rollback");
            // an error aborts the transaction until rollback
            s.executeUpdate("INSERT INTO " + TABLE + " (id, v) VALUES (202, 'tx')");
            SQLException e = expectSqlError(() -> s.executeQuery("SELECT 1/0"), "division by zero");
            eq(e.getSQLState(), "22012", "division by zero");
            e = expectSqlError(() -> s.executeQuery("SELECT 1"), "query in an aborted transaction");
            eq(e.getSQLState(), "25P02", "aborted transaction SQLSTATE");
            c.rollback();
            s.executeUpdate("INSERT INTO " + TABLE + " (id, v) VALUES (203, 'tx')");
            c.commit();
        } finally {
            c.setAutoCommit(true);
        }
        eq(scalarString(c, "SELECT string_agg(id::text, ',') FROM " + TABLE + " WHERE v = 'tx'"), "203", "committed rows");
    }

    static void copy() throws Exception {
        CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder sb = new StringBuilder();
        int n = 5000;
        for (int i = 0; i < n; i++) sb.append(10000 + i).append("\tcopy ").append(i).append('\n');
        long in = cm.copyIn("COPY " + TABLE + " (id, v) FROM STDIN", new StringReader(sb.toString()));
        eq(in, (long) n, "copyIn count");
        eq(scalarLong(c, "SELECT count(*) FROM " + TABLE + " WHERE id >= 10000"), (long) n, "rows copied in");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        long outN = cm.copyOut("COPY (SELECT id, v FROM " + TABLE + " WHERE id >= 10000 ORDER BY id) TO STDOUT", out);
        eq(outN, (long) n, "copyOut count");
        eq(out.toString(StandardCharsets.UTF_8), sb.toString(), "copied out text");
        // a COPY that fails midway reports the error and leaves the connection usable
        SQLException e = expectSqlError(() -> cm.copyIn("COPY " + TABLE + " (id, v) FROM STDIN",
                new StringReader("10000\tdup\n")), "COPY with a duplicate key");
        eq(e.getSQLState(), "23505", "COPY error SQLSTATE");
        eq(scalarLong(c, "SELECT 1"), 1L, "after COPY");
    }

    static void notifyListen() throws Exception {
        Connection listener = connect();
        String channel = "ch_jdbc_" + ProcessHandle.current().pid();
        try (Statement s = listener.createStatement()) {
            s.execute("LISTEN " + channel);
        }
        long pid = scalarLong(c, "SELECT pg_backend_pid()");
        try (PreparedStatement ps = c.prepareStatement("SELECT pg_notify(?, ?)")) {
            ps.setString(1, channel);
            ps.setString(2, "payload ☃");
            ps.executeQuery().close();
        }
        List<PGNotification> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + 10000;
        PGConnection pl = listener.unwrap(PGConnection.class);
        while (got.isEmpty() && System.currentTimeMillis() < deadline) {
            PGNotification[] ns = pl.getNotifications(5000);
            if (ns != null) for (PGNotification x : ns) got.add(x);
        }
        eq(got.size(), 1, "notifications received");
        eq(got.get(0).getName(), channel, "channel");
        eq(got.get(0).getParameter(), "payload ☃", "payload");
        eq((long) got.get(0).getPID(), pid, "notifier's pid");
    }

    static void cancel() throws Exception {
        Connection cc = connect();
        ScheduledExecutorService ex = Executors.newSingleThreadScheduledExecutor();
        try (Statement s = cc.createStatement()) {
            ScheduledFuture<?> f = ex.schedule(() -> {
                try {
                    s.cancel();
                } catch (SQLException e) {
                    System.err.println("cancel failed: " + e);
                }
            }, 500, TimeUnit.MILLISECONDS);
            long t0 = System.nanoTime();
            SQLException e = expectSqlError(() -> s.executeQuery("SELECT pg_sleep(30)"), "pg_sleep(30)");
            f.get(5, TimeUnit.SECONDS);
            eq(e.getSQLState(), "57014", "cancel SQLSTATE (" + e.getMessage() + ")");
            check((System.nanoTime() - t0) / 1_000_000_000L < 10, "the cancel took too long");
        } finally {
            ex.shutdownNow();
        }
        eq(scalarString(cc, "SELECT 'after cancel'"), "after cancel", "after cancel");
    }

    static void tls() throws Exception {
        Properties p = new Properties();
        p.setProperty("sslmode", "verify-full");
        p.setProperty("sslrootcert", CA_FILE);
        Connection t = connect("localhost", "shunt_scram", "scram-secret", p);
        eq(scalarString(t, "SELECT current_user"), "shunt_scram", "over TLS");
        Properties bad = new Properties();
        bad.setProperty("sslmode", "verify-full");
        bad.setProperty("sslrootcert", "/dev/null/none");
        expectSqlError(() -> connect("localhost", "shunt_scram", "scram-secret", bad), "TLS with a missing CA file");
        // a CA that did not sign the server's certificate
        java.nio.file.Path d = java.nio.file.Files.createTempDirectory("shunt-wrong-ca");
        try {
            Process pr = new ProcessBuilder("openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=wrong CA", "-keyout", d + "/ca.key", "-out", d + "/ca.crt")
                    .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
            check(pr.waitFor() == 0, "openssl could not make a CA");
            Properties wrong = new Properties();
            wrong.setProperty("sslmode", "verify-full");
            wrong.setProperty("sslrootcert", d + "/ca.crt");
            SQLException e = expectSqlError(() -> connect("localhost", "shunt_scram", "scram-secret", wrong),
                    "TLS with a wrong CA");
            eq(e.getSQLState(), "08006", "wrong CA SQLSTATE (" + e.getMessage() + ")");
        } finally {
            for (String f : new String[] {"ca.key", "ca.crt"}) java.nio.file.Files.deleteIfExists(d.resolve(f));
            java.nio.file.Files.deleteIfExists(d);
        }
    }

    public static void main(String[] args) {
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(90_000);
                System.err.println("FAIL: DriverTest still running after 90 s");
                Runtime.getRuntime().halt(1);
            } catch (InterruptedException ignored) {
            }
        });
        watchdog.setDaemon(true);
        watchdog.start();

        Object[][] steps = {
            {"SCRAM login (and a wrong password)", (SqlAction) DriverTest::scram},
            {"PreparedStatement reuse past prepareThreshold", (SqlAction) DriverTest::preparedReuse},
            {"batch insert", (SqlAction) DriverTest::batch},
            {"setFetchSize: a portal read 100 rows at a time", (SqlAction) DriverTest::fetchSize},
            {"SQLSTATE 23505 and 42P01", (SqlAction) DriverTest::errors},
            {"transaction rollback", (SqlAction) DriverTest::rollback},
            {"CopyManager copyIn/copyOut", (SqlAction) DriverTest::copy},
            {"LISTEN/NOTIFY", (SqlAction) DriverTest::notifyListen},
            {"Statement.cancel() from another thread", (SqlAction) DriverTest::cancel},
            {"TLS verify-full", (SqlAction) DriverTest::tls},
        };
        int rc = 0;
        for (Object[] step : steps) {
            long t0 = System.nanoTime();
            try {
                ((SqlAction) step[1]).run();
                System.out.printf("ok - %s (%d ms)%n", step[0], (System.nanoTime() - t0) / 1_000_000);
            } catch (Throwable e) {
                System.err.println("FAIL: DriverTest: " + step[0] + ": " + e);
                if (!(e instanceof Failed)) e.printStackTrace();
                rc = 1;
                break;
            }
        }
        for (Connection x : conns) {
            try {
                x.close();
            } catch (SQLException ignored) {
            }
        }
        try (Connection d = connect(); Statement s = d.createStatement()) {
            s.execute("DROP TABLE IF EXISTS " + TABLE);
        } catch (SQLException e) {
            System.err.println("warning: cleanup failed: " + e);
        }
        if (rc == 0) System.out.println("DriverTest: all ok");
        System.exit(rc);
    }
}
