package io.sparkkms.fastpath;

import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.spark.api.plugin.PluginContext;

/**
 * An executor's cache of the keys it fetched from the driver, by handle: one RPC per handle per executor JVM,
 * bounded like the driver's registry (least recently used handle dropped and zeroed). In local mode the
 * executor shares the driver's JVM and reads {@link KeyRegistry} directly when it can see it.
 */
final class ExecutorKeys {
    private static final int MAX_HANDLES = Integer.getInteger("sparkkms.fastpath.maxHandles", 256);
    private static volatile PluginContext context;

    private static final LinkedHashMap<String, Map<String, byte[]>> CACHE =
            new LinkedHashMap<String, Map<String, byte[]>>(16, 0.75f, true) {
                private static final long serialVersionUID = 1L;

                @Override
                protected boolean removeEldestEntry(Map.Entry<String, Map<String, byte[]>> eldest) {
                    if (size() > MAX_HANDLES) {
                        KeyRegistry.wipe(eldest.getValue());
                        return true;
                    }
                    return false;
                }
            };

    private ExecutorKeys() {}

    static void setContext(PluginContext ctx) {
        context = ctx;
    }

    static boolean hasContext() {
        return context != null;
    }

    static void clear() {
        synchronized (CACHE) {
            CACHE.values().forEach(KeyRegistry::wipe);
            CACHE.clear();
        }
    }

    static void drop(String handle) {
        synchronized (CACHE) {
            Map<String, byte[]> keys = CACHE.remove(handle);
            if (keys != null) {
                KeyRegistry.wipe(keys);
            }
        }
    }

    /** The keys of {@code handle}: cached, else from this JVM's registry (local mode), else from the driver. */
    static Map<String, byte[]> keysFor(String handle, String column) {
        synchronized (CACHE) {
            Map<String, byte[]> keys = CACHE.get(handle);
            if (keys != null) {
                return keys;
            }
            keys = KeyRegistry.copyOf(handle);
            if (keys == null) {
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
                            + "not fetch the fast path's data keys from the driver (" + e.getClass().getSimpleName()
                            + ")");
                }
                if (!(reply instanceof Map)) {
                    throw new FastPathException("ConfigurationError", "column '" + column + "': the driver no "
                            + "longer holds the fast path's data keys of this read (spark_kms.spark.fastpath.forget(), "
                            + "more than " + MAX_HANDLES + " reads since, or another session): call read_encrypted again");
                }
                @SuppressWarnings("unchecked")
                Map<String, byte[]> fetched = (Map<String, byte[]>) reply;
                keys = fetched;
            }
            CACHE.put(handle, keys);
            return keys;
        }
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
