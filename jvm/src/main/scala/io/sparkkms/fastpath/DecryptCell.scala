package io.sparkkms.fastpath

import org.apache.spark.sql.catalyst.analysis.TypeCheckResult
import org.apache.spark.sql.catalyst.expressions.{BinaryExpression, Expression}
import org.apache.spark.sql.catalyst.expressions.codegen.{CodegenContext, ExprCode}
import org.apache.spark.sql.types.{BinaryType, DataType, StringType}
import org.apache.spark.unsafe.types.UTF8String

/**
 * `spark_kms_decrypt_string(cell, config)` / `spark_kms_decrypt_binary(cell, config)` as a Catalyst expression
 * (registered by [[SparkKmsExtensions]]): an AES-256-GCM cell back to its UTF-8 text or bytes, row by row, with
 * the same checks and errors as the Java UDFs ([[CellDecryptor]]). `config` is the binary literal that
 * `spark_kms.spark.fastpath` builds (key handle, column, label, AAD tails; never key bytes). [[DecryptColumnarRule]]
 * replaces it by a column of [[DecryptColumnarExec]], which decrypts whole batches, when its input comes straight
 * from a columnar scan; this row-wise form is the fallback. Its string forms show the column and the first 8 hex
 * characters of the key handle only, never the config's bytes.
 */
case class DecryptCell(cell: Expression, config: Expression, binaryOut: Boolean)
    extends BinaryExpression {

  override def left: Expression = cell
  override def right: Expression = config
  override def dataType: DataType = if (binaryOut) BinaryType else StringType
  override def nullable: Boolean = true
  override def prettyName: String = if (binaryOut) DecryptCell.BinaryName else DecryptCell.StringName

  override def checkInputDataTypes(): TypeCheckResult = {
    if (cell.dataType != BinaryType || config.dataType != BinaryType) {
      TypeCheckResult.TypeCheckFailure(s"$prettyName takes (binary cell, binary config), got " +
        s"(${cell.dataType.simpleString}, ${config.dataType.simpleString})")
    } else if (!config.foldable) TypeCheckResult.TypeCheckFailure(s"$prettyName: the config must be a literal")
    else TypeCheckResult.TypeCheckSuccess
  }

  /** The config literal's bytes. */
  @transient lazy val configBytes: Array[Byte] = config.eval().asInstanceOf[Array[Byte]]
  @transient private lazy val parsed: DecryptBase.Config = DecryptBase.Config.parse(configBytes)
  @transient private var decryptor: CellDecryptor = _

  /** This thread's decryptor (a task's: expressions are deserialized per task). */
  private def current(): CellDecryptor = {
    val d = decryptor
    if (d != null && (d.owner eq Thread.currentThread())) d
    else {
      val fresh = new CellDecryptor(parsed)
      decryptor = fresh
      fresh
    }
  }

  def decryptString(bytes: Array[Byte]): UTF8String = UTF8String.fromBytes(current().plain(bytes))

  def decryptBinary(bytes: Array[Byte]): Array[Byte] = current().plain(bytes)

  override protected def nullSafeEval(c: Any, cfg: Any): Any = {
    val bytes = c.asInstanceOf[Array[Byte]]
    if (binaryOut) decryptBinary(bytes) else decryptString(bytes)
  }

  override protected def doGenCode(ctx: CodegenContext, ev: ExprCode): ExprCode = {
    val ref = ctx.addReferenceObj("sparkKmsDecrypt", this, classOf[DecryptCell].getName)
    val method = if (binaryOut) "decryptBinary" else "decryptString"
    nullSafeCodeGen(ctx, ev, (c, _) => s"${ev.value} = $ref.$method($c);")
  }

  /** "handle 1a2b3c4d" (the first 8 hex characters of the key handle), for plan strings. */
  def handlePrefix: String =
    if (config.foldable) DecryptCell.handlePrefix(configBytes) else "handle ?"

  override def toString: String = s"$prettyName($cell, $handlePrefix)"
  override def sql: String = s"$prettyName(${cell.sql})"

  override protected def withNewChildrenInternal(newLeft: Expression, newRight: Expression): DecryptCell =
    copy(cell = newLeft, config = newRight)
}

object DecryptCell {
  val StringName = "spark_kms_decrypt_string"
  val BinaryName = "spark_kms_decrypt_binary"

  /** The function registry's builder: `name(cell, config)`. */
  def build(name: String, binaryOut: Boolean)(args: Seq[Expression]): Expression = {
    if (args.size != 2) {
      throw new FastPathException("ConfigurationError", s"$name takes 2 arguments (cell, config), got ${args.size}")
    }
    DecryptCell(args.head, args(1), binaryOut)
  }

  def handlePrefix(config: Array[Byte]): String =
    try "handle " + DecryptBase.Config.parse(config).handle.take(8)
    catch { case _: RuntimeException => "handle ?" } // not a config of spark_kms: none of its bytes shown
}
