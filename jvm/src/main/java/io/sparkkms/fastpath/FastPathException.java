package io.sparkkms.fastpath;

/**
 * A spark_kms error raised inside the JVM fast path. Its message is one line, {@code spark_kms error: } followed
 * by JSON naming the spark_kms Python error class and its message, which
 * {@code spark_kms.spark._errors.errors_translated()} turns back into that class on the Python driver. Messages
 * name the column, the DEK id and the file; never cell bytes, plaintext or key bytes.
 */
public final class FastPathException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** The prefix Python looks for (spark_kms.spark._errors.JVM_MARKER). */
    public static final String MARKER = "spark_kms error: ";

    private final String errorClass;
    private final String detail;

    public FastPathException(String errorClass, String detail) {
        super(MARKER + "{\"class\": " + quote(errorClass) + ", \"message\": " + quote(detail) + "}", null, false, true);
        this.errorClass = errorClass;
        this.detail = detail;
    }

    public String errorClass() {
        return errorClass;
    }

    public String detail() {
        return detail;
    }

    /** JSON string literal, ASCII only (like Python's json.dumps(ensure_ascii=True)). */
    static String quote(String text) {
        StringBuilder sb = new StringBuilder(text.length() + 2).append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.append('"').toString();
    }
}
