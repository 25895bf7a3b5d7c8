/* Test workload: java.util.logging through LTTng's JUL agent (liblttng-ust-agent-java).
 *
 * usage: java -cp ...:lttng-ust-agent-jul.jar JulApp N
 * When /tmp/go-B appears (B = 1, 2, ...), logs one batch on logger "tracecar.jul":
 * N INFO records "item <i>" and one WARNING "warn <i>" per 10; then writes /tmp/done-B.
 */
import java.io.File;
import java.io.FileOutputStream;
import java.util.logging.Level;
import java.util.logging.Logger;
import org.lttng.ust.agent.jul.LttngLogHandler;

public class JulApp {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(args[0]);
        Logger log = Logger.getLogger("tracecar.jul");
        log.setLevel(Level.ALL);
        log.setUseParentHandlers(false);
        log.addHandler(new LttngLogHandler()); // registers with the session daemon
        System.out.println("ready");
        System.out.flush();
        for (int batch = 1;; batch++) {
            File go = new File("/tmp/go-" + batch);
            while (!go.exists()) {
                Thread.sleep(20);
            }
            for (int i = 0; i < n; i++) {
                log.info("item " + i);
                if (i % 10 == 0) {
                    log.warning("warn " + i);
                }
            }
            new FileOutputStream("/tmp/done-" + batch).close();
        }
    }
}
