package io.sparkkms.fastpath;

import java.util.Arrays;

import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.Decimal;
import org.apache.spark.sql.vectorized.ColumnVector;
import org.apache.spark.sql.vectorized.ColumnarArray;
import org.apache.spark.sql.vectorized.ColumnarMap;
import org.apache.spark.unsafe.types.UTF8String;

/**
 * A decrypted string or binary column of one batch (the columnar path's output): the plaintexts back to back
 * in one array, an offset and a length per row (length -1: null). Reused batch after batch by its task, like
 * the Parquet reader's vectors: a value read from it is valid until the next batch. {@link #close()} zeroes it.
 */
public final class DecryptedVector extends ColumnVector {
    byte[] data = new byte[0];
    int[] offsets = new int[0];
    int[] lengths = new int[0];
    private int rows;
    private int nulls = -1;

    public DecryptedVector(DataType type) {
        super(type);
    }

    void reset(int n) {
        if (offsets.length < n) {
            offsets = new int[n];
            lengths = new int[n];
        }
        rows = n;
        nulls = -1;
    }

    byte[] data(int size) {
        if (data.length < size) {
            Arrays.fill(data, (byte) 0);
            data = new byte[Math.max(size, data.length + (data.length >> 1))];
        }
        return data;
    }

    @Override
    public void close() {
        Arrays.fill(data, (byte) 0);
        data = new byte[0];
        rows = 0;
    }

    @Override
    public boolean hasNull() {
        return numNulls() > 0;
    }

    @Override
    public int numNulls() {
        if (nulls < 0) {
            int n = 0;
            for (int i = 0; i < rows; i++) {
                n += lengths[i] < 0 ? 1 : 0;
            }
            nulls = n;
        }
        return nulls;
    }

    @Override
    public boolean isNullAt(int rowId) {
        return lengths[rowId] < 0;
    }

    @Override
    public UTF8String getUTF8String(int rowId) {
        int len = lengths[rowId];
        return len < 0 ? null : UTF8String.fromBytes(data, offsets[rowId], len);
    }

    @Override
    public byte[] getBinary(int rowId) {
        int len = lengths[rowId];
        return len < 0 ? null : Arrays.copyOfRange(data, offsets[rowId], offsets[rowId] + len);
    }

    private UnsupportedOperationException unsupported() {
        return new UnsupportedOperationException("a decrypted " + type.simpleString() + " column");
    }

    @Override
    public boolean getBoolean(int rowId) {
        throw unsupported();
    }

    @Override
    public byte getByte(int rowId) {
        throw unsupported();
    }

    @Override
    public short getShort(int rowId) {
        throw unsupported();
    }

    @Override
    public int getInt(int rowId) {
        throw unsupported();
    }

    @Override
    public long getLong(int rowId) {
        throw unsupported();
    }

    @Override
    public float getFloat(int rowId) {
        throw unsupported();
    }

    @Override
    public double getDouble(int rowId) {
        throw unsupported();
    }

    @Override
    public ColumnarArray getArray(int rowId) {
        throw unsupported();
    }

    @Override
    public ColumnarMap getMap(int rowId) {
        throw unsupported();
    }

    @Override
    public Decimal getDecimal(int rowId, int precision, int scale) {
        throw unsupported();
    }

    @Override
    public ColumnVector getChild(int ordinal) {
        throw unsupported();
    }
}
