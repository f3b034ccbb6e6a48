// Logs in with pgjdbc and reports who the session is, as `key=value` lines.
//
//   java -cp /usr/share/java/postgresql.jar WhoAmI.java JDBC_URL
//
// The password comes from the URL or from PGWARDEN_TEST_PASSWORD. A failed login prints
// `error_sqlstate=` and `error_message=` and exits with status 2.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class WhoAmI {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        String password = System.getenv("PGWARDEN_TEST_PASSWORD");
        if (password != null) {
            props.setProperty("password", password);
        }
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            System.out.println("driver_version=" + c.getMetaData().getDriverVersion());
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery(
                     "SELECT session_user, current_user, current_database(), pg_backend_pid()")) {
                r.next();
                System.out.println("session_user=" + r.getString(1));
                System.out.println("current_user=" + r.getString(2));
                System.out.println("database=" + r.getString(3));
                System.out.println("backend_pid=" + r.getInt(4));
            }
        } catch (SQLException e) {
            System.out.println("error_sqlstate=" + e.getSQLState());
            System.out.println("error_message=" + e.getMessage().replace('\n', ' '));
            System.exit(2);
        }
    }
}
