// Launches one codelibs cluster runner (OpenSearchRunner / ElasticsearchClusterRunner) and keeps
// the JVM alive until the node closes. Run by `scripts/engine` in single-file source mode:
//
//   java -cp <runner classpath> RunnerLauncher.java <runner class> <runner args...>
//
// Why not the runners' own main(): both hard-code maxHttpPort = 9299 and refuse any
// baseHttpPort + 1 above it ("The http port ... is unavailable."), and their main() swallows
// every exception into a bare System.exit(1). This launcher calls setMaxHttpPort(-1) (use
// exactly baseHttpPort + node number, no port scan) and prints the real failure.
// Reflection keeps it independent of which runner (and which engine API) is on the classpath.

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.Arrays;

public class RunnerLauncher {
    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: RunnerLauncher <runner class> [runner args...]");
            System.exit(2);
        }
        final Class<?> cls = Class.forName(args[0]);
        final String[] runnerArgs = Arrays.copyOfRange(args, 1, args.length);
        final Object runner = cls.getConstructor().newInstance();
        final Method close = cls.getMethod("close");
        final Method isClosed = cls.getMethod("isClosed");
        cls.getMethod("setMaxHttpPort", int.class).invoke(runner, -1);

        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                close.invoke(runner);
            } catch (Throwable t) {
                t.printStackTrace();
            }
        }, "runner-shutdown"));

        try {
            cls.getMethod("build", String[].class).invoke(runner, (Object) runnerArgs);
        } catch (InvocationTargetException e) {
            System.err.println("RunnerLauncher: node failed to start:");
            e.getCause().printStackTrace();
            System.exit(1);
        }
        System.out.println("RunnerLauncher: node started");
        System.out.flush();

        while (!(Boolean) isClosed.invoke(runner)) {
            Thread.sleep(1000);
        }
        System.out.println("RunnerLauncher: all nodes closed, exiting");
        System.exit(0);
    }
}
