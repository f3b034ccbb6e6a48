// What Keycloak does with its database, through pgjdbc: DDL at start (migrations), batch
// inserts, prepared statements executed often enough to become named server-side statements,
// and transactions that roll back. Results are `key=value` lines; any failure is an exception
// and a non-zero exit.
//
//   java -cp /usr/share/java/postgresql.jar KeycloakWorkload.java JDBC_URL
//
// The password comes from the URL or from PGWARDEN_TEST_PASSWORD.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;

public class KeycloakWorkload {
    static final int BATCH = 500;
    static final int EXECUTIONS = 12;

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        String password = System.getenv("PGWARDEN_TEST_PASSWORD");
        if (password != null) {
            props.setProperty("password", password);
        }
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            System.out.println("driver_version=" + c.getMetaData().getDriverVersion());
            System.out.println("prepare_threshold=" + c.unwrap(PGConnection.class).getPrepareThreshold());
            System.out.println("session_user=" + one(c, "SELECT session_user"));
            System.out.println("current_user=" + one(c, "SELECT current_user"));
            System.out.println("backend_pid=" + one(c, "SELECT pg_backend_pid()"));

            // A migration: a table and an index, as Liquibase would create them.
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE kc_realm (id varchar(36) PRIMARY KEY, name varchar(255) NOT NULL, "
                    + "enabled boolean NOT NULL, created bigint NOT NULL)");
                s.execute("CREATE INDEX kc_realm_name ON kc_realm (name)");
            }
            System.out.println("table_owner=" + one(c,
                "SELECT tableowner FROM pg_tables WHERE tablename = 'kc_realm'"));

            // Batch insert.
            int inserted = 0;
            try (PreparedStatement p = c.prepareStatement(
                    "INSERT INTO kc_realm (id, name, enabled, created) VALUES (?, ?, ?, ?)")) {
                for (int i = 0; i < BATCH; i++) {
                    p.setString(1, id(i));
                    p.setString(2, "realm-" + i);
                    p.setBoolean(3, i % 3 != 0);
                    p.setLong(4, 1_700_000_000_000L + i);
                    p.addBatch();
                }
                for (int n : p.executeBatch()) {
                    inserted += n;
                }
            }
            System.out.println("batch_inserted=" + inserted);
            System.out.println("rows_after_batch=" + one(c, "SELECT count(*) FROM kc_realm"));

            // One prepared statement executed past the prepare threshold: from then on pgjdbc
            // uses a named server-side statement (and binary results).
            int correct = 0;
            boolean serverPrepared = false;
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT name, enabled, created FROM kc_realm WHERE id = ?")) {
                for (int i = 0; i < EXECUTIONS; i++) {
                    int n = i * 37 % BATCH;
                    p.setString(1, id(n));
                    try (ResultSet r = p.executeQuery()) {
                        if (r.next() && r.getString(1).equals("realm-" + n)
                                && r.getBoolean(2) == (n % 3 != 0)
                                && r.getLong(3) == 1_700_000_000_000L + n && !r.next()) {
                            correct++;
                        }
                    }
                }
                serverPrepared = p.unwrap(PGStatement.class).isUseServerPrepare();
            }
            System.out.println("prepared_correct=" + correct);
            System.out.println("prepared_server_side=" + serverPrepared);
            System.out.println("named_statements=" + one(c,
                "SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements "
                + "WHERE NOT from_sql AND statement LIKE '%FROM kc_realm WHERE id = $1%'"));

            // A transaction that rolls back, then one that commits.
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO kc_realm VALUES ('rolled-back-1', 'x', true, 0), "
                    + "('rolled-back-2', 'y', true, 0)");
                System.out.println("rows_in_transaction=" + one(c, "SELECT count(*) FROM kc_realm"));
                c.rollback();
                System.out.println("rows_after_rollback=" + one(c, "SELECT count(*) FROM kc_realm"));
                s.executeUpdate("UPDATE kc_realm SET enabled = NOT enabled WHERE id = '" + id(1) + "'");
                s.executeUpdate("DELETE FROM kc_realm WHERE id = '" + id(2) + "'");
                c.commit();
            }
            c.setAutoCommit(true);
            System.out.println("rows_after_commit=" + one(c, "SELECT count(*) FROM kc_realm"));
            System.out.println("updated_enabled=" + one(c,
                "SELECT enabled FROM kc_realm WHERE id = '" + id(1) + "'"));
            System.out.println("done=true");
        }
    }

    static String id(int i) {
        return String.format("00000000-0000-4000-8000-%012d", i);
    }

    static String one(Connection c, String sql) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            r.next();
            return r.getString(1);
        }
    }
}
