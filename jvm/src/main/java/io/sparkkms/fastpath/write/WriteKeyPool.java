package io.sparkkms.fastpath.write;

import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

import io.sparkkms.fastpath.FastPathException;
import org.apache.spark.api.plugin.PluginContext;

/**
 * The driver's pools of fresh data keys for JVM-path writes ({@code write_encrypted}, issue 16), by random handle.
 * Python generates the keys (GenerateDataKey, on the driver) and puts each one in with the canonical JSON of the
 * footer key table of the task that will use it. Each task attempt takes one key out, once (a key never serves two
 * attempts): over the plugin's RPC ({@link TakeDek}) from an executor JVM, directly in local mode. A key leaves the
 * pool when it is taken and the pool's copy is zeroed; {@link #forget} zeroes what is left. Nothing here is logged.
 */
public final class WriteKeyPool {
    static final int KEY_BYTES = 32;
    private static final Map<String, ArrayDeque<PooledDek>> POOLS = new HashMap<>();
    private static volatile PluginContext executorContext;

    private WriteKeyPool() {}

    /**
     * Registers the pool of one write: {@code dekIds} the comma-separated hex DEK ids, {@code keys} their 32-byte
     * keys concatenated, {@code tables} the footer key table JSON of each key, one per line, all in the same order.
     * {@code keys} is zeroed once copied.
     */
    public static void register(String handle, String dekIds, byte[] keys, String tables) {
        try {
            String[] ids = dekIds.isEmpty() ? new String[0] : dekIds.split(",");
            String[] jsons = tables.isEmpty() ? new String[0] : tables.split("\n");
            if (keys.length != jsons.length * KEY_BYTES || ids.length != jsons.length) {
                throw new IllegalArgumentException(ids.length + " DEK ids and " + jsons.length + " key tables for "
                        + keys.length + " key bytes");
            }
            ArrayDeque<PooledDek> pool = new ArrayDeque<>();
            for (int i = 0; i < jsons.length; i++) {
                pool.add(new PooledDek(hex(ids[i]), Arrays.copyOfRange(keys, i * KEY_BYTES, (i + 1) * KEY_BYTES),
                        jsons[i]));
            }
            synchronized (POOLS) {
                ArrayDeque<PooledDek> previous = POOLS.put(handle, pool);
                if (previous != null) {
                    previous.forEach(PooledDek::wipe);
                }
            }
        } finally {
            Arrays.fill(keys, (byte) 0);
        }
    }

    /** {@link #take} in the RPC reply form ({@link PooledDek#toReply}), or null (for the driver plugin). */
    public static Object[] takeForReply(String handle) {
        PooledDek dek = take(handle);
        return dek == null ? null : dek.toReply();
    }

    /** Takes one key of {@code handle}'s pool (the pool's copy is gone), or null: no such pool, or it is empty. */
    public static PooledDek take(String handle) {
        synchronized (POOLS) {
            ArrayDeque<PooledDek> pool = POOLS.get(handle);
            if (pool == null || pool.isEmpty()) {
                return null;
            }
            PooledDek dek = pool.poll();
            PooledDek copy = new PooledDek(dek.dekId, dek.key.clone(), dek.keyTable);
            dek.wipe();
            return copy;
        }
    }

    static boolean hasPool(String handle) {
        synchronized (POOLS) {
            return POOLS.containsKey(handle);
        }
    }

    /** How many keys of {@code handle} are left (-1: no such pool). */
    public static int remaining(String handle) {
        synchronized (POOLS) {
            ArrayDeque<PooledDek> pool = POOLS.get(handle);
            return pool == null ? -1 : pool.size();
        }
    }

    /** Drops (and zeroes) the keys left in {@code handle}'s pool; whether it existed. */
    public static boolean forget(String handle) {
        synchronized (POOLS) {
            ArrayDeque<PooledDek> pool = POOLS.remove(handle);
            if (pool != null) {
                pool.forEach(PooledDek::wipe);
            }
            return pool != null;
        }
    }

    /** Drops (and zeroes) every pool; how many there were. */
    public static int forgetAll() {
        synchronized (POOLS) {
            int n = POOLS.size();
            POOLS.values().forEach(pool -> pool.forEach(PooledDek::wipe));
            POOLS.clear();
            return n;
        }
    }

    static byte[] hex(String text) {
        if (text.length() != 16) {
            throw new IllegalArgumentException("a DEK id is 16 hex characters");
        }
        byte[] out = new byte[8];
        for (int i = 0; i < 8; i++) {
            out[i] = (byte) Integer.parseInt(text.substring(2 * i, 2 * i + 2), 16);
        }
        return out;
    }

    /** The executor plugin's context (set by {@code FastPathPlugin} on each executor). */
    public static void setExecutorContext(PluginContext ctx) {
        executorContext = ctx;
    }

    /** A fresh key for one task attempt: from this JVM's pool (local mode), else from the driver over RPC. */
    static PooledDek takeForTask(String handle) {
        PooledDek dek = null;
        boolean local = hasPool(handle);
        if (local) {
            dek = take(handle);
        } else {
            PluginContext ctx = executorContext;
            if (ctx == null) {
                throw new FastPathException("ConfigurationError", "the spark_kms fast-path plugin is not loaded in "
                        + "this executor (spark.plugins must name io.sparkkms.fastpath.FastPathPlugin when the session "
                        + "starts); write with fast_path=False");
            }
            Object reply;
            try {
                reply = ctx.ask(new TakeDek(handle));
            } catch (Exception e) {
                throw new FastPathException("JobError", "the executor could not take a data key of the write from "
                        + "the driver (" + e.getClass().getSimpleName() + ")");
            }
            if (reply instanceof Object[]) {
                dek = PooledDek.fromReply((Object[]) reply);
            } else if (reply != null) {
                throw new FastPathException("JobError", "the driver answered a data-key request of the write with a "
                        + reply.getClass().getName() + " (another spark_kms jar on the driver?)");
            }
        }
        if (dek == null) {
            throw new FastPathException("JobError", "the JVM write path's data-key pool is exhausted or gone (more "
                    + "write task attempts than keys made for the write, or the write ended): write again, or with "
                    + "fast_path=False");
        }
        return dek;
    }

    /** One data key and the footer key table of the task that uses it. */
    public static final class PooledDek implements Serializable {
        private static final long serialVersionUID = 1L;
        final byte[] dekId;
        final byte[] key;
        final String keyTable;

        PooledDek(byte[] dekId, byte[] key, String keyTable) {
            if (dekId.length != 8 || key.length != KEY_BYTES) {
                throw new IllegalArgumentException("a DEK id is 8 bytes and a key 32");
            }
            this.dekId = dekId;
            this.key = key;
            this.keyTable = keyTable;
        }

        void wipe() {
            Arrays.fill(key, (byte) 0);
        }

        /**
         * The RPC reply form: JDK types only ({dek id, key, key table}), which any class loader of the executor
         * deserializes (the jar's own classes may sit in another loader than the RPC's).
         */
        Object[] toReply() {
            return new Object[] {dekId, key, keyTable};
        }

        static PooledDek fromReply(Object[] reply) {
            if (reply.length != 3 || !(reply[0] instanceof byte[]) || !(reply[1] instanceof byte[])
                    || !(reply[2] instanceof String)) {
                return null;
            }
            return new PooledDek((byte[]) reply[0], (byte[]) reply[1], (String) reply[2]);
        }

        byte[] keyTableBytes() {
            return keyTable.getBytes(StandardCharsets.UTF_8);
        }

        @Override
        public String toString() {
            return "PooledDek(<redacted>)";
        }
    }

    /** The RPC request of an executor: one fresh key of a write's pool. */
    public static final class TakeDek implements Serializable {
        private static final long serialVersionUID = 1L;
        public final String handle;

        public TakeDek(String handle) {
            this.handle = handle;
        }

        @Override
        public String toString() {
            return "TakeDek(" + handle + ")";
        }
    }
}
