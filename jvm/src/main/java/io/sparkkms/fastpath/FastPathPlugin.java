package io.sparkkms.fastpath;

import java.util.Collections;
import java.util.Map;

import org.apache.spark.SparkContext;
import org.apache.spark.api.plugin.DriverPlugin;
import org.apache.spark.api.plugin.ExecutorPlugin;
import org.apache.spark.api.plugin.PluginContext;
import org.apache.spark.api.plugin.SparkPlugin;

/**
 * The Spark plugin of the spark_kms JVM fast path ({@code spark.plugins=io.sparkkms.fastpath.FastPathPlugin}).
 * The driver side answers an executor's {@link ExecutorKeys.FetchKeys} with a copy of that handle's keys from
 * {@link KeyRegistry} (null for an unknown handle); the executor side keeps the {@link PluginContext} the
 * executors ask with. Keys travel over Spark's RPC, encrypted when {@code spark.network.crypto.enabled}.
 */
public final class FastPathPlugin implements SparkPlugin {
    private static volatile boolean driverActive;

    /** Whether this JVM's driver plugin started (Python checks it before using the fast path). */
    public static boolean driverActive() {
        return driverActive;
    }

    /** Which AES-GCM implementation this JVM uses: "libsodium <version>[ (bundled)]", "openssl" or "jce (why)". */
    public static String cipherImplementation() {
        return DekCipher.implementation();
    }

    @Override
    public DriverPlugin driverPlugin() {
        return new Driver();
    }

    @Override
    public ExecutorPlugin executorPlugin() {
        return new Executor();
    }

    /** How many key sets (task attempt, handle) this JVM's running tasks hold: 0 once they ended (tests). */
    public static int executorKeySetsHeld() {
        return ExecutorKeys.held();
    }

    static final class Driver implements DriverPlugin {
        @Override
        public Map<String, String> init(SparkContext sc, PluginContext ctx) {
            driverActive = true;
            return Collections.emptyMap();
        }

        @Override
        public Object receive(Object message) {
            if (message instanceof ExecutorKeys.FetchKeys) {
                return KeyRegistry.copyOf(((ExecutorKeys.FetchKeys) message).handle);
            }
            if (message instanceof io.sparkkms.fastpath.write.WriteKeyPool.TakeDek) {
                // JVM write path: one fresh data key of a write's pool per task attempt (null: none left)
                return io.sparkkms.fastpath.write.WriteKeyPool.takeForReply(
                        ((io.sparkkms.fastpath.write.WriteKeyPool.TakeDek) message).handle);
            }
            throw new IllegalArgumentException("unexpected message " + message.getClass().getName());
        }

        @Override
        public void shutdown() {
            driverActive = false;
            KeyRegistry.forgetAll();
            io.sparkkms.fastpath.write.WriteKeyPool.forgetAll();
        }
    }

    static final class Executor implements ExecutorPlugin {
        @Override
        public void init(PluginContext ctx, Map<String, String> extraConf) {
            ExecutorKeys.setContext(ctx);
            io.sparkkms.fastpath.write.WriteKeyPool.setExecutorContext(ctx);
        }

        @Override
        public void shutdown() {
            ExecutorKeys.clear();
        }
    }
}
