package io.sparkkms.fastpath

import org.apache.spark.sql.SparkSessionExtensions
import org.apache.spark.sql.catalyst.FunctionIdentifier
import org.apache.spark.sql.catalyst.expressions.ExpressionInfo

/**
 * The spark_kms SQL extension (`spark.sql.extensions=io.sparkkms.fastpath.SparkKmsExtensions`, added by
 * `spark_kms.spark.fastpath.spark_conf()`): `spark_kms_decrypt_string` / `spark_kms_decrypt_binary` as Catalyst
 * expressions ([[DecryptCell]]) and the columnar rule that decrypts them batch by batch over a columnar scan
 * ([[DecryptColumnarRule]]). Without it (the plugin alone), the fast path registers the same names as Java UDFs.
 */
class SparkKmsExtensions extends (SparkSessionExtensions => Unit) {
  override def apply(extensions: SparkSessionExtensions): Unit = {
    for ((name, binaryOut) <- Seq(DecryptCell.StringName -> false, DecryptCell.BinaryName -> true)) {
      extensions.injectFunction((FunctionIdentifier(name), new ExpressionInfo(classOf[DecryptCell].getName, name),
        DecryptCell.build(name, binaryOut) _))
    }
    extensions.injectColumnar(session => new DecryptColumnarRules(session))
  }
}
