// Statement.cancel() of a running `pg_sleep`, as pgjdbc does it: a CancelRequest on a new
// plaintext connection (no SSLRequest), even though the session itself runs over TLS.
//
//   java -cp /usr/share/java/postgresql.jar CancelSleep.java JDBC_URL
//
// Prints `backend_pid=` and `sleeping=true`, then waits for a line on stdin before it cancels,
// so the test can first see the sleep running on the server. Then prints the sleep's SQLSTATE
// and whether the session still answers. The password comes from PGWARDEN_TEST_PASSWORD.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

public class CancelSleep {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        String password = System.getenv("PGWARDEN_TEST_PASSWORD");
        if (password != null) {
            props.setProperty("password", password);
        }
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT pg_backend_pid()")) {
                r.next();
                System.out.println("backend_pid=" + r.getInt(1));
            }
            Statement sleeper = c.createStatement();
            AtomicReference<String> outcome = new AtomicReference<>("no outcome");
            Thread t = new Thread(() -> {
                try {
                    sleeper.execute("SELECT pg_sleep(60)");
                    outcome.set("completed");
                } catch (SQLException e) {
                    outcome.set(e.getSQLState());
                }
            });
            t.start();
            System.out.println("sleeping=true");
            System.out.flush();
            new BufferedReader(new InputStreamReader(System.in)).readLine();
            sleeper.cancel();
            t.join(120_000);
            System.out.println("sleep_sqlstate=" + outcome.get());
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 41 + 1")) {
                r.next();
                System.out.println("after_cancel=" + r.getInt(1));
            }
        }
    }
}
