package io.sparkkms.fastpath;

import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The driver's in-memory registry of plaintext data keys, by random handle (one handle per
 * {@code read_encrypted} call that uses the fast path). Python puts keys in over py4j; executors fetch a
 * handle's keys through {@link FastPathPlugin}'s RPC. Bounded: at most {@code sparkkms.fastpath.maxHandles}
 * (system property, default 256) handles, the least recently used one dropped first; dropped and forgotten
 * keys are zeroed. Nothing here is logged or written anywhere.
 */
public final class KeyRegistry {
    static final int KEY_BYTES = 32;
    static final int MAX_HANDLES = Integer.getInteger("sparkkms.fastpath.maxHandles", 256);

    private static final LinkedHashMap<String, Map<String, byte[]>> HANDLES =
            new LinkedHashMap<String, Map<String, byte[]>>(16, 0.75f, true) {
                private static final long serialVersionUID = 1L;

                @Override
                protected boolean removeEldestEntry(Map.Entry<String, Map<String, byte[]>> eldest) {
                    if (size() > MAX_HANDLES) {
                        wipe(eldest.getValue());
                        return true;
                    }
                    return false;
                }
            };

    private KeyRegistry() {}

    /**
     * Registers the keys of one read: {@code dekIds} comma-separated hex DEK ids, {@code keys} their 32-byte keys
     * concatenated in the same order. {@code keys} is zeroed once copied.
     */
    public static void register(String handle, String dekIds, byte[] keys) {
        try {
            String[] ids = dekIds.isEmpty() ? new String[0] : dekIds.split(",");
            if (keys.length != ids.length * KEY_BYTES) {
                throw new IllegalArgumentException(ids.length + " DEK ids for " + keys.length + " key bytes");
            }
            Map<String, byte[]> map = new HashMap<>();
            for (int i = 0; i < ids.length; i++) {
                map.put(ids[i], Arrays.copyOfRange(keys, i * KEY_BYTES, (i + 1) * KEY_BYTES));
            }
            synchronized (HANDLES) {
                Map<String, byte[]> previous = HANDLES.put(handle, map);
                if (previous != null) {
                    wipe(previous);
                }
            }
        } finally {
            Arrays.fill(keys, (byte) 0);
        }
    }

    /** A copy of the keys of {@code handle} (for an executor), or null when it is not (or no longer) here. */
    public static HashMap<String, byte[]> copyOf(String handle) {
        synchronized (HANDLES) {
            Map<String, byte[]> map = HANDLES.get(handle);
            if (map == null) {
                return null;
            }
            HashMap<String, byte[]> copy = new HashMap<>();
            map.forEach((k, v) -> copy.put(k, v.clone()));
            return copy;
        }
    }

    /** Drops (and zeroes) the keys of {@code handle}; whether it was registered. */
    public static boolean forget(String handle) {
        synchronized (HANDLES) {
            Map<String, byte[]> map = HANDLES.remove(handle);
            if (map != null) {
                wipe(map);
            }
            return map != null;
        }
    }

    /** Drops (and zeroes) every key; how many handles there were. */
    public static int forgetAll() {
        synchronized (HANDLES) {
            int n = HANDLES.size();
            HANDLES.values().forEach(KeyRegistry::wipe);
            HANDLES.clear();
            return n;
        }
    }

    /** How many handles are registered. */
    public static int size() {
        synchronized (HANDLES) {
            return HANDLES.size();
        }
    }

    static void wipe(Map<String, byte[]> keys) {
        keys.values().forEach(k -> Arrays.fill(k, (byte) 0));
        keys.clear();
    }
}
