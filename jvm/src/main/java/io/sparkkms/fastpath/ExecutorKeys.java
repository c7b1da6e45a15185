package io.sparkkms.fastpath;

import java.util.HashMap;
import java.util.Map;

import org.apache.spark.TaskContext;
import org.apache.spark.api.plugin.PluginContext;
import org.apache.spark.util.TaskCompletionListener;

/**
 * The keys an executor's running tasks hold, by task attempt and handle: fetched from the driver once per task
 * attempt and handle (one RPC; in local mode the executor shares the driver's JVM and copies them from
 * {@link KeyRegistry}), zeroed and dropped when the task ends, failures included. So an executor holds a read's
 * keys only while a task of that read runs, and once the driver has dropped a handle
 * ({@code spark_kms.spark.fastpath.forget()}, its LRU bound, the session's end) no new task anywhere can use it:
 * the next action of a DataFrame read with it fails with a ConfigurationError, on a cluster as in local mode.
 */
final class ExecutorKeys {
    private static volatile PluginContext context;

    /** By "taskAttemptId/handle". */
    private static final HashMap<String, Map<String, byte[]>> HELD = new HashMap<>();

    private ExecutorKeys() {}

    static void setContext(PluginContext ctx) {
        context = ctx;
    }

    /** Drops (and zeroes) every key the running tasks hold: the executor is shutting down. */
    static void clear() {
        synchronized (HELD) {
            HELD.values().forEach(KeyRegistry::wipe);
            HELD.clear();
        }
    }

    /** How many (task attempt, handle) key sets this JVM holds: what tests look at. */
    static int held() {
        synchronized (HELD) {
            return HELD.size();
        }
    }

    private static void drop(String slot) {
        synchronized (HELD) {
            Map<String, byte[]> keys = HELD.remove(slot);
            if (keys != null) {
                KeyRegistry.wipe(keys);
            }
        }
    }

    /**
     * The keys of {@code handle} for the running task: held since its first call, else from this JVM's registry
     * (local mode) or from the driver. Outside a task (an expression evaluated on the driver) a fresh copy from
     * the registry, not held.
     */
    static Map<String, byte[]> keysFor(String handle, String column) {
        TaskContext task = TaskContext.get();
        String slot = (task == null ? "driver" : Long.toString(task.taskAttemptId())) + "/" + handle;
        synchronized (HELD) {
            Map<String, byte[]> keys = HELD.get(slot);
            if (keys != null) {
                return keys;
            }
        }
        Map<String, byte[]> keys = KeyRegistry.copyOf(handle);
        if (keys == null) {
            keys = fetch(handle, column);
        }
        if (task == null) {
            return keys;
        }
        synchronized (HELD) {
            Map<String, byte[]> raced = HELD.putIfAbsent(slot, keys);
            if (raced != null) { // another thread of the same task got there first
                KeyRegistry.wipe(keys);
                return raced;
            }
        }
        task.addTaskCompletionListener((TaskCompletionListener) ctx -> drop(slot));
        return keys;
    }

    private static Map<String, byte[]> fetch(String handle, String column) {
        PluginContext ctx = context;
        if (ctx == null) {
            throw new FastPathException("ConfigurationError", "column '" + column + "': the spark_kms "
                    + "fast-path plugin is not loaded in this executor (spark.plugins must name "
                    + FastPathPlugin.class.getName() + " when the session starts); read with fast_path=False");
        }
        Object reply;
        try {
            reply = ctx.ask(new FetchKeys(handle));
        } catch (Exception e) {
            throw new FastPathException("ConfigurationError", "column '" + column + "': the executor could "
                    + "not fetch the fast path's data keys from the driver (" + e.getClass().getSimpleName() + ")");
        }
        if (!(reply instanceof Map)) {
            throw forgotten(column);
        }
        @SuppressWarnings("unchecked")
        Map<String, byte[]> fetched = (Map<String, byte[]>) reply;
        return fetched;
    }

    private static FastPathException forgotten(String column) {
        return new FastPathException("ConfigurationError", "column '" + column + "': the driver no longer holds "
                + "the fast path's data keys of this read (spark_kms.spark.fastpath.forget(), more than "
                + KeyRegistry.MAX_HANDLES + " reads since, or another session): call read_encrypted again");
    }

    /** The RPC request of an executor: the keys of one handle. */
    static final class FetchKeys implements java.io.Serializable {
        private static final long serialVersionUID = 1L;
        final String handle;

        FetchKeys(String handle) {
            this.handle = handle;
        }

        @Override
        public String toString() {
            return "FetchKeys(" + handle + ")";
        }
    }
}
