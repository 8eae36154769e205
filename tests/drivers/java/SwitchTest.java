// Named prepared statements kept across pgshunt's phase switches, with PgJDBC.
// Run by tests/integration/test_switch_drivers.sh (not by run.sh beside it):
//
//   java -cp CLASSES:postgresql.jar SwitchTest HOST PORT DBNAME USER SITE
//
// One connection, prepareThreshold=1 (every PreparedStatement is a named server-side
// statement from its first execution); the PreparedStatement objects stay open through
// the stages.  At the end of a stage the program prints "SYNC <stage>" and waits for a
// line on stdin while the shell switches the phase on pgshunt's console:
//   passthrough -> dual_write -> read_next (FORCE) -> cutover -> (read_next) dual_write_again
//   -> passthrough_again
// The socket is tapped (a SocketFactory of our own), so every statement is also checked
// on the wire: after the first stage the driver binds the same statement name and never
// parses again, and gets back the exact command tag, DataRows as wide as its columns,
// no RowDescription for a statement without RETURNING, no stray ParseComplete or
// CloseComplete.  Exits non-zero at the first failed check.

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.FilterInputStream;
import java.io.FilterOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.Statement;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;

import org.postgresql.PGStatement;

public class SwitchTest {
    // ---------------------------------------------------------------- the wire tap

    static final class Msg {
        final char t;
        String name = "";        // P, B, C, D: the statement name
        String tag = "";         // C (backend): the command tag
        String code = "";        // E: SQLSTATE
        String message = "";
        String formats = "";     // B: the result format codes
        int width = -1;          // D (backend): number of fields
        List<String> cols = new ArrayList<>(); // T
        Msg(char t) { this.t = t; }
        @Override public String toString() {
            return t + (name.isEmpty() ? "" : "(" + name + ")") + (formats.isEmpty() ? "" : "formats" + formats) + (tag.isEmpty() ? "" : "[" + tag + "]")
                + (code.isEmpty() ? "" : "{" + code + " " + message + "}") + (width < 0 ? "" : "#" + width)
                + (cols.isEmpty() ? "" : cols.toString());
        }
    }

    static final class Tap {
        final ByteArrayOutputStream inBuf = new ByteArrayOutputStream();
        final ByteArrayOutputStream outBuf = new ByteArrayOutputStream();
        boolean started = false; // the StartupMessage has no type byte
        final List<Msg> sent = new ArrayList<>();
        final List<Msg> got = new ArrayList<>();

        synchronized void reset() { sent.clear(); got.clear(); }

        static int int32(byte[] b, int at) {
            return ((b[at] & 0xff) << 24) | ((b[at + 1] & 0xff) << 16) | ((b[at + 2] & 0xff) << 8) | (b[at + 3] & 0xff);
        }
        static int int16(byte[] b, int at) { return (short) (((b[at] & 0xff) << 8) | (b[at + 1] & 0xff)); }
        static int cstrEnd(byte[] b, int at) { while (b[at] != 0) at++; return at; }
        static String cstr(byte[] b, int at) { return new String(b, at, cstrEnd(b, at) - at, StandardCharsets.UTF_8); }

        synchronized void in(byte[] b, int off, int len) {
            inBuf.write(b, off, len);
            byte[] all = inBuf.toByteArray();
            int at = 0;
            while (all.length - at >= 5) {
                int len32 = int32(all, at + 1);
                if (all.length - at < 1 + len32) break;
                Msg m = new Msg((char) all[at]);
                int body = at + 5;
                switch (m.t) {
                case 'T': {
                    int n = int16(all, body), p = body + 2;
                    for (int i = 0; i < n; i++) {
                        m.cols.add(cstr(all, p));
                        p = cstrEnd(all, p) + 1 + 18;
                    }
                    break;
                }
                case 'D': m.width = int16(all, body); break;
                case 'C': m.tag = cstr(all, body); break;
                case 'E': {
                    int p = body;
                    while (all[p] != 0) {
                        char f = (char) all[p];
                        String v = cstr(all, p + 1);
                        if (f == 'C') m.code = v;
                        if (f == 'M') m.message = v;
                        p = cstrEnd(all, p + 1) + 1;
                    }
                    break;
                }
                default: break;
                }
                got.add(m);
                at += 1 + len32;
            }
            inBuf.reset();
            inBuf.write(all, at, all.length - at);
        }

        synchronized void out(byte[] b, int off, int len) {
            outBuf.write(b, off, len);
            byte[] all = outBuf.toByteArray();
            int at = 0;
            for (;;) {
                if (!started) {
                    if (all.length - at < 4) break;
                    int len32 = int32(all, at);
                    if (all.length - at < len32) break;
                    at += len32;
                    started = true;
                    continue;
                }
                if (all.length - at < 5) break;
                int len32 = int32(all, at + 1);
                if (all.length - at < 1 + len32) break;
                Msg m = new Msg((char) all[at]);
                int body = at + 5;
                switch (m.t) {
                case 'P': m.name = cstr(all, body); break;
                case 'B': { // portal, statement, parameter formats, parameters, result formats
                    int p = cstrEnd(all, body) + 1;
                    m.name = cstr(all, p);
                    p = cstrEnd(all, p) + 1;
                    p += 2 + 2 * int16(all, p);
                    int np = int16(all, p);
                    p += 2;
                    for (int i = 0; i < np; i++) {
                        int l = int32(all, p);
                        p += 4 + Math.max(l, 0);
                    }
                    int nr = int16(all, p);
                    StringBuilder f = new StringBuilder();
                    for (int i = 0; i < nr; i++) f.append(i == 0 ? "" : ",").append(int16(all, p + 2 + 2 * i));
                    m.formats = "[" + f + "]";
                    break;
                }
                case 'C': case 'D': m.name = (char) all[body] + ":" + cstr(all, body + 1); break;
                default: break;
                }
                sent.add(m);
                at += 1 + len32;
            }
            outBuf.reset();
            outBuf.write(all, at, all.length - at);
        }
    }

    static final Tap TAP = new Tap();

    static final class TapIn extends FilterInputStream {
        TapIn(InputStream in) { super(in); }
        @Override public int read() throws IOException {
            int c = super.read();
            if (c >= 0) TAP.in(new byte[] {(byte) c}, 0, 1);
            return c;
        }
        @Override public int read(byte[] b, int off, int len) throws IOException {
            int n = super.read(b, off, len);
            if (n > 0) TAP.in(b, off, n);
            return n;
        }
        @Override public long skip(long n) throws IOException { // through read(), so the tap sees it
            byte[] b = new byte[(int) Math.min(n, 8192)];
            int r = read(b, 0, b.length);
            return Math.max(r, 0);
        }
    }

    static final class TapOut extends FilterOutputStream {
        TapOut(OutputStream out) { super(out); }
        @Override public void write(int c) throws IOException {
            TAP.out(new byte[] {(byte) c}, 0, 1);
            out.write(c);
        }
        @Override public void write(byte[] b, int off, int len) throws IOException {
            TAP.out(b, off, len);
            out.write(b, off, len);
        }
    }

    static final class TapSocket extends Socket {
        private InputStream in;
        private OutputStream out;
        @Override public synchronized InputStream getInputStream() throws IOException {
            if (in == null) in = new TapIn(super.getInputStream());
            return in;
        }
        @Override public synchronized OutputStream getOutputStream() throws IOException {
            if (out == null) out = new TapOut(super.getOutputStream());
            return out;
        }
    }

    /** Named in the socketFactory connection property; PgJDBC instantiates it. */
    public static final class TapFactory extends javax.net.SocketFactory {
        public TapFactory() {}
        @Override public Socket createSocket() { return new TapSocket(); }
        @Override public Socket createSocket(String host, int port) throws IOException {
            Socket s = new TapSocket();
            s.connect(new InetSocketAddress(host, port));
            return s;
        }
        @Override public Socket createSocket(String host, int port, InetAddress la, int lp) throws IOException {
            Socket s = new TapSocket();
            s.bind(new InetSocketAddress(la, lp));
            s.connect(new InetSocketAddress(host, port));
            return s;
        }
        @Override public Socket createSocket(InetAddress host, int port) throws IOException {
            Socket s = new TapSocket();
            s.connect(new InetSocketAddress(host, port));
            return s;
        }
        @Override public Socket createSocket(InetAddress host, int port, InetAddress la, int lp) throws IOException {
            Socket s = new TapSocket();
            s.bind(new InetSocketAddress(la, lp));
            s.connect(new InetSocketAddress(host, port));
            return s;
        }
    }

    // ---------------------------------------------------------------- checks

    static final class Failed extends RuntimeException {
        Failed(String m) { super(m); }
    }

    static void check(boolean cond, String what) { if (!cond) throw new Failed(what); }

    static void eq(Object got, Object want, String what) {
        if (!Objects.equals(got, want)) throw new Failed(what + ": got " + got + ", want " + want);
    }

    static String site;
    static Connection conn;
    static PreparedStatement claim, read, finish, touch, forget;
    static final Map<String, String> boundName = new HashMap<>();
    static boolean switched = false;
    static int backendPid;

    /** A row of the answer: column name -> value (getObject), in order. */
    static List<Map<String, Object>> rows(ResultSet rs, List<String> cols) throws Exception {
        ResultSetMetaData md = rs.getMetaData();
        List<String> names = new ArrayList<>();
        for (int i = 1; i <= md.getColumnCount(); i++) names.add(md.getColumnName(i));
        eq(names, cols, "result set columns");
        List<Map<String, Object>> out = new ArrayList<>();
        while (rs.next()) {
            Map<String, Object> row = new HashMap<>();
            for (int i = 1; i <= cols.size(); i++) row.put(cols.get(i - 1), rs.getObject(i));
            out.add(row);
        }
        rs.close();
        return out;
    }

    interface Call { Object run() throws Exception; }

    /** Runs one statement and checks the wire: want tag, want columns, want number of rows. */
    static void wire(String label, String what, Call call, String tag, List<String> cols, int nrows) throws Exception {
        TAP.reset();
        Exception thrown = null;
        try {
            call.run();
        } catch (Exception e) {
            thrown = e;
        }
        List<Msg> sent, got;
        synchronized (TAP) {
            sent = new ArrayList<>(TAP.sent);
            got = new ArrayList<>(TAP.got);
        }
        String ctx = what + " (sent " + sent + ", got " + got + ")";
        if (thrown != null) throw new Failed(ctx + ": " + thrown);
        List<Msg> binds = new ArrayList<>(), parses = new ArrayList<>();
        int closes = 0;
        for (Msg m : sent) {
            if (m.t == 'B') binds.add(m);
            if (m.t == 'P') parses.add(m);
            if (m.t == 'C') closes++;
        }
        eq(binds.size(), 1, "Binds sent: " + ctx);
        String name = binds.get(0).name;
        if (!switched) {
            boundName.put(label, name);
        } else {
            eq(name, boundName.get(label), "statement bound after the switch: " + ctx);
            eq(parses.size(), 0, "Parse sent after the switch: " + ctx);
        }
        List<String> tags = new ArrayList<>();
        int dataRows = 0, parseComplete = 0, closeComplete = 0, ready = 0;
        for (Msg m : got) {
            switch (m.t) {
            case 'E': throw new Failed("error on the wire " + m.code + " " + m.message + ": " + ctx);
            case 'C': tags.add(m.tag); break;
            case 'T':
                eq(m.cols, cols, "RowDescription: " + ctx);
                break;
            case 'D':
                dataRows++;
                eq(m.width, cols.size(), "DataRow width: " + ctx);
                break;
            case '1': parseComplete++; break;
            case '3': closeComplete++; break;
            case 'Z': ready++; break;
            default: break;
            }
        }
        eq(tags, List.of(tag), "command tags: " + ctx);
        eq(dataRows, nrows, "DataRows: " + ctx);
        eq(parseComplete, parses.size(), "ParseComplete not asked for: " + ctx);
        eq(closeComplete, closes, "CloseComplete not asked for: " + ctx);
        if (switched) eq(ready, 1, "ReadyForQuery: " + ctx);
    }

    static void claim(String key, int i, boolean first) throws Exception {
        String what = "claim " + key + (first ? "" : " (retry)");
        wire("claim", what, () -> {
            claim.setString(1, site);
            claim.setString(2, key);
            claim.setBytes(3, new byte[] {(byte) i, (byte) 0xff, 0, 0x5c});
            List<Map<String, Object>> r = rows(claim.executeQuery(), List.of("created_at"));
            eq(r.size(), first ? 1 : 0, what + ": rows");
            if (first) check(r.get(0).get("created_at") instanceof Timestamp, what + ": created_at is " + r.get(0));
            return null;
        }, first ? "INSERT 0 1" : "INSERT 0 0", List.of("created_at"), first ? 1 : 0);
    }

    static void read(String key, String status) throws Exception {
        String what = "read " + key;
        wire("read", what, () -> {
            read.setString(1, site);
            read.setString(2, key);
            List<Map<String, Object>> r = rows(read.executeQuery(), List.of("status"));
            eq(r.size(), status == null ? 0 : 1, what + ": rows " + r);
            if (status != null) eq(r.get(0).get("status"), status, what + ": status");
            return null;
        }, "SELECT " + (status == null ? 0 : 1), List.of("status"), status == null ? 0 : 1);
    }

    static void finish(String key, String status, int code, boolean found) throws Exception {
        String what = "finish " + key;
        wire("finish", what, () -> {
            finish.setString(1, status);
            finish.setInt(2, code);
            finish.setString(3, site);
            finish.setString(4, key);
            List<Map<String, Object>> r = rows(finish.executeQuery(), List.of("status", "response_code"));
            eq(r.size(), found ? 1 : 0, what + ": rows " + r);
            if (found) {
                eq(r.get(0).get("status"), status, what + ": status");
                eq(r.get(0).get("response_code"), code, what + ": response_code");
            }
            return null;
        }, "UPDATE " + (found ? 1 : 0), List.of("status", "response_code"), found ? 1 : 0);
    }

    static void touch(String key, boolean found) throws Exception {
        String what = "touch " + key;
        wire("touch", what, () -> {
            touch.setString(1, "{\"driver\": \"jdbc\", \"key\": \"" + key + "\"}");
            touch.setString(2, site);
            touch.setString(3, key);
            eq(touch.executeUpdate(), found ? 1 : 0, what + ": executeUpdate count");
            return null;
        }, "UPDATE " + (found ? 1 : 0), List.of(), 0);
    }

    static void forget(String key, boolean found) throws Exception {
        String what = "forget " + key;
        wire("forget", what, () -> {
            forget.setString(1, site);
            forget.setString(2, key);
            eq(forget.executeUpdate(), found ? 1 : 0, what + ": executeUpdate count");
            return null;
        }, "DELETE " + (found ? 1 : 0), List.of(), 0);
    }

    static void samePid() throws Exception {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT pg_backend_pid()")) {
            rs.next();
            eq(rs.getInt(1), backendPid, "the connection to the server changed");
        }
    }

    static BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

    static void sync(String stage) throws IOException {
        System.out.println("SYNC " + stage);
        System.out.flush();
        if (stdin.readLine() == null) throw new Failed("stdin closed: the shell is gone");
    }

    interface Step { void run() throws Exception; }

    static void step(String title, Step s) {
        long t0 = System.nanoTime();
        try {
            s.run();
        } catch (Throwable e) {
            System.out.println("FAIL: switch jdbc: " + title + ": " + e);
            if (!(e instanceof Failed)) e.printStackTrace(System.out);
            System.out.flush();
            System.exit(1);
        }
        System.out.println("ok - " + title + " (" + (System.nanoTime() - t0) / 1_000_000 + " ms)");
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 5) {
            System.err.println("usage: SwitchTest HOST PORT DBNAME USER SITE");
            System.exit(2);
        }
        site = args[4];
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(50_000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL: switch jdbc did not finish within 50 s");
            System.out.flush();
            Runtime.getRuntime().halt(1);
        });
        watchdog.setDaemon(true);
        watchdog.start();

        step("connect (prepareThreshold=1, tapped socket)", () -> {
            Properties p = new Properties();
            p.setProperty("user", args[3]);
            p.setProperty("prepareThreshold", "1");
            p.setProperty("sslmode", "disable");
            p.setProperty("gssEncMode", "disable");
            p.setProperty("connectTimeout", "10");
            p.setProperty("socketTimeout", "30");
            p.setProperty("socketFactory", TapFactory.class.getName());
            conn = DriverManager.getConnection("jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[2], p);
            conn.setAutoCommit(true);
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT pg_backend_pid()")) {
                rs.next();
                backendPid = rs.getInt(1);
            }
            claim = conn.prepareStatement("INSERT INTO ingest_idempotency (site_id, idempotency_key, request_hash) "
                + "VALUES (?, ?, ?) ON CONFLICT (site_id, idempotency_key) DO NOTHING RETURNING created_at");
            read = conn.prepareStatement("SELECT status FROM ingest_idempotency WHERE site_id = ? AND idempotency_key = ?");
            finish = conn.prepareStatement("UPDATE ingest_idempotency SET status = ?, response_code = ? "
                + "WHERE site_id = ? AND idempotency_key = ? RETURNING status, response_code");
            touch = conn.prepareStatement("UPDATE ingest_idempotency SET response_body = ?::jsonb "
                + "WHERE site_id = ? AND idempotency_key = ?");
            forget = conn.prepareStatement("DELETE FROM ingest_idempotency WHERE site_id = ? AND idempotency_key = ?");
        });

        step("passthrough: claim, retry, read, UPDATE ... RETURNING, executeUpdate UPDATE/DELETE (statements made named)", () -> {
            claim("pre-1", 1, true);
            claim("pre-1", 1, false);
            claim("pre-2", 2, true);
            read("pre-1", "processing");
            finish("pre-1", "completed", 201, true);
            finish("nobody", "completed", 201, false);
            touch("pre-1", true);
            read("pre-1", "completed");
            claim("pre-3", 3, true);
            forget("pre-3", true);
            forget("pre-3", false);
            for (PreparedStatement ps : Arrays.asList(claim, read, finish, touch, forget)) {
                check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "a statement is not server-prepared");
            }
            for (String l : List.of("claim", "read", "finish", "touch", "forget")) {
                String n = boundName.get(l);
                check(n != null && !n.isEmpty(), "no named statement for " + l + ": " + boundName);
            }
            System.out.println("  statements: " + boundName);
            switched = true;
        });
        step("(the shell: MIGRATE PREPARE, SET PHASE dual_write)", () -> sync("passthrough"));
        step("dual_write: the same PreparedStatements, new keys", () -> {
            samePid();
            claim("dw-1", 11, true);
            claim("dw-1", 11, false);
            claim("dw-2", 12, true);
            claim("dw-3", 13, true);
            read("dw-1", "processing");
            finish("dw-1", "completed", 201, true);
            finish("pre-2", "failed", 502, true);
            finish("nobody", "completed", 201, false);
            touch("dw-2", true);
            touch("nobody", false);
            forget("dw-3", true);
            forget("dw-3", false);
            read("dw-1", "completed");
            read("pre-1", "completed");
        });
        step("(the shell: tables checked, SET PHASE read_next FORCE, a row put in each table directly)", () -> sync("dual_write"));
        step("read_next: the read comes from next_table; writes still mirrored", () -> {
            samePid();
            read("direct-only", null);
            read("next-only", "failed");
            read("pre-1", null);
            read("dw-1", "completed");
            read("pre-2", "failed");
            claim("rn-1", 21, true);
            claim("rn-1", 21, false);
            read("rn-1", "processing");
            finish("rn-1", "completed", 200, true);
            touch("rn-1", true);
            read("rn-1", "completed");
        });
        step("(the shell: SET PHASE cutover)", () -> sync("read_next"));
        step("cutover: writes go to next_table first (claims through the view), mirrored into the table", () -> {
            samePid();
            read("direct-only", null);
            read("pre-1", null);
            read("rn-1", "completed");
            claim("co-1", 51, true);
            claim("co-1", 51, false);
            claim("rn-1", 21, false);
            claim("co-2", 52, true);
            read("co-1", "processing");
            finish("co-1", "completed", 201, true);
            finish("nobody", "completed", 201, false);
            touch("co-1", true);
            forget("co-2", true);
            forget("co-2", false);
            read("co-1", "completed");
        });
        step("(the shell: SET PHASE read_next, SET PHASE dual_write)", () -> sync("cutover"));
        step("dual_write again: reads from the table again", () -> {
            samePid();
            read("direct-only", "processing");
            read("pre-1", "completed");
            read("next-only", null);
            claim("dw-4", 31, true);
            finish("dw-4", "completed", 201, true);
        });
        step("(the shell: SET PHASE passthrough)", () -> sync("dual_write_again"));
        step("passthrough again: nothing mirrored, the same PreparedStatements", () -> {
            samePid();
            claim("pt-1", 41, true);
            claim("pt-1", 41, false);
            read("pt-1", "processing");
            finish("pt-1", "completed", 201, true);
            touch("pt-1", true);
            claim("pt-2", 42, true);
            forget("pt-2", true);
            read("direct-only", "processing");
        });
        step("close", () -> {
            for (PreparedStatement ps : Arrays.asList(claim, read, finish, touch, forget)) ps.close();
            conn.close();
        });
        System.out.println("switch jdbc: all ok");
        System.exit(0);
    }
}
