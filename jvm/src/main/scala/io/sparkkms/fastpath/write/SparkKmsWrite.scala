package io.sparkkms.fastpath.write

import java.nio.ByteBuffer
import java.nio.charset.StandardCharsets

import org.apache.hadoop.conf.Configuration
import org.apache.hadoop.mapreduce.Job
import org.apache.parquet.hadoop.ParquetOutputFormat
import org.apache.parquet.hadoop.api.WriteSupport.{FinalizedWriteContext, WriteContext}

import io.sparkkms.fastpath.FastPathException
import org.apache.spark.sql.SparkSession
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{BinaryExpression, Expression}
import org.apache.spark.sql.catalyst.expressions.codegen.{CodegenContext, ExprCode}
import org.apache.spark.sql.catalyst.expressions.codegen.Block._
import org.apache.spark.sql.execution.datasources.OutputWriterFactory
import org.apache.spark.sql.execution.datasources.parquet.{ParquetFileFormat, ParquetWriteSupport}
import org.apache.spark.sql.types.{BinaryType, DataType, StringType, StructType}
import org.apache.spark.unsafe.Platform
import org.apache.spark.unsafe.types.UTF8String

/**
 * `spark_kms_encrypt(value, config)`: the AES-256-GCM cell (docs/FORMAT.md 2.1) of a string (its UTF-8 bytes) or
 * binary value, null for null. `config` is a binary literal made by spark_kms/spark/fastpath_write.py:
 * "SKW1" then three length-prefixed (u32) fields: the write's key-pool handle, the column name, and the AAD tail
 * (u16 len(column) || column || context). It holds no key: the task's key comes from [[TaskEncryptor]].
 * Nondeterministic (each call uses a fresh nonce), so Spark never folds, reorders or repeats it.
 */
case class SparkKmsEncrypt(child: Expression, config: Expression) extends BinaryExpression {
  override def left: Expression = child
  override def right: Expression = config
  override def dataType: DataType = BinaryType
  override def nullable: Boolean = child.nullable
  override lazy val deterministic: Boolean = false
  override def prettyName: String = SparkKmsEncrypt.Name

  override def checkInputDataTypes(): org.apache.spark.sql.catalyst.analysis.TypeCheckResult = {
    import org.apache.spark.sql.catalyst.analysis.TypeCheckResult._
    if (!(child.dataType.isInstanceOf[StringType] || child.dataType == BinaryType)) {
      TypeCheckFailure(s"${SparkKmsEncrypt.Name} encrypts string or binary values, not ${child.dataType.simpleString}")
    } else if (config.dataType != BinaryType || !config.foldable) {
      TypeCheckFailure(s"${SparkKmsEncrypt.Name}: the config is a binary literal")
    } else {
      TypeCheckSuccess
    }
  }

  @transient private lazy val parsed: (String, String, Array[Byte]) = SparkKmsEncrypt.parse(config.eval())
  @transient private var taskId: Long = -1L
  @transient private var encryptor: TaskEncryptor = _

  private def current(): TaskEncryptor = {
    val tc = org.apache.spark.TaskContext.get()
    val id = if (tc == null) -2L else tc.taskAttemptId()
    if (encryptor == null || id != taskId) {
      encryptor = TaskEncryptor.forCurrentTask(parsed._1)
      taskId = id
    }
    encryptor
  }

  override def eval(input: InternalRow): Any = {
    val value = child.eval(input)
    if (value == null) null else encryptValue(value)
  }

  /** The cell of one non-null value (a UTF8String or a byte array); called by the generated code too. */
  def encryptValue(value: Any): Array[Byte] = {
    val (_, column, tail) = parsed
    value match {
      case s: UTF8String =>
        s.getBaseObject match {
          case bytes: Array[Byte] =>
            current().encrypt(bytes, (s.getBaseOffset - Platform.BYTE_ARRAY_OFFSET).toInt, s.numBytes, tail, column)
          case _ =>
            val bytes = s.getBytes
            current().encrypt(bytes, 0, bytes.length, tail, column)
        }
      case bytes: Array[Byte] => current().encrypt(bytes, 0, bytes.length, tail, column)
    }
  }

  override protected def doGenCode(ctx: CodegenContext, ev: ExprCode): ExprCode = {
    // The child's value straight into encryptValue: no interpreted child, no row; the config is a literal.
    val self = ctx.addReferenceObj("sparkKmsEncrypt", this)
    val value = child.genCode(ctx)
    ev.copy(code = code"""
      ${value.code}
      boolean ${ev.isNull} = ${value.isNull};
      byte[] ${ev.value} = null;
      if (!${ev.isNull}) {
        ${ev.value} = $self.encryptValue(${value.value});
      }""")
  }

  override protected def withNewChildrenInternal(newLeft: Expression, newRight: Expression): SparkKmsEncrypt =
    copy(child = newLeft, config = newRight)
}

object SparkKmsEncrypt {
  val Name = "spark_kms_encrypt"
  private val Magic = "SKW1".getBytes(StandardCharsets.US_ASCII)

  /** (handle, column, AAD tail) of a config literal. */
  def parse(raw: Any): (String, String, Array[Byte]) = {
    val bytes = raw match {
      case b: Array[Byte] => b
      case _ => throw new FastPathException("ConfigurationError", s"$Name: the config is not a binary literal")
    }
    if (bytes.length < 4 || !java.util.Arrays.equals(bytes.take(4), Magic)) {
      throw new FastPathException("ConfigurationError", s"$Name: not a spark_kms write config")
    }
    val buf = ByteBuffer.wrap(bytes, 4, bytes.length - 4)
    def field(): Array[Byte] = {
      val n = buf.getInt()
      val out = new Array[Byte](n)
      buf.get(out)
      out
    }
    val handle = new String(field(), StandardCharsets.UTF_8)
    val column = new String(field(), StandardCharsets.UTF_8)
    (handle, column, field())
  }
}

/** Registers `spark_kms_encrypt` as a temporary function of a session (called over py4j). */
object WriteFunctions {
  def register(spark: SparkSession): Unit = {
    val classic = spark.asInstanceOf[org.apache.spark.sql.classic.SparkSession]
    classic.sessionState.functionRegistry.createOrReplaceTempFunction(
      SparkKmsEncrypt.Name,
      (args: Seq[Expression]) => {
        if (args.length != 2) {
          throw new FastPathException("ConfigurationError", s"${SparkKmsEncrypt.Name} takes (value, config)")
        }
        SparkKmsEncrypt(args(0), args(1))
      },
      "scala_udf")
  }

  /** Which AES-GCM implementation this JVM encrypts with. */
  def implementation(): String = TaskEncryptor.implementation()
}

/**
 * Spark's own Parquet writer, with the task's key table in each file's footer: `prepareWrite` swaps in
 * [[KeyTableWriteSupport]]. Used as `df.write.format("io.sparkkms.fastpath.write.SparkKmsParquetFormat")` with
 * the option [[SparkKmsParquetFormat.HandleOption]] (the write's key-pool handle).
 */
class SparkKmsParquetFormat extends ParquetFileFormat {
  override def shortName(): String = "spark_kms_parquet"

  override def toString: String = "SparkKmsParquet"

  override def prepareWrite(
      sparkSession: SparkSession,
      job: Job,
      options: Map[String, String],
      dataSchema: StructType): OutputWriterFactory = {
    val factory = super.prepareWrite(sparkSession, job, options, dataSchema)
    val handle = options.getOrElse(SparkKmsParquetFormat.HandleOption,
      throw new FastPathException("ConfigurationError",
        s"the spark_kms Parquet format needs the option ${SparkKmsParquetFormat.HandleOption}"))
    val conf = job.getConfiguration
    conf.set(SparkKmsParquetFormat.HandleOption, handle)
    conf.set(ParquetOutputFormat.WRITE_SUPPORT_CLASS, classOf[KeyTableWriteSupport].getName)
    // Plain timestamp columns as the Python path's pyarrow writes them (INT64 microseconds), not Spark's INT96.
    conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    factory
  }
}

object SparkKmsParquetFormat {
  val HandleOption = "spark_kms.write.handle"
  val KeyTableKey = "spark_kms.key_table"
}

/**
 * Spark's ParquetWriteSupport plus the footer key table of the task (FORMAT.md section 7): the task's encryptor is
 * made when a file opens (so a file of nulls only has its key table too) and its key table is written at close.
 */
class KeyTableWriteSupport extends ParquetWriteSupport {
  private var handle: String = _

  override def init(configuration: Configuration): WriteContext = {
    handle = configuration.get(SparkKmsParquetFormat.HandleOption)
    TaskEncryptor.forCurrentTask(handle)
    super.init(configuration)
  }

  override def finalizeWrite(): FinalizedWriteContext = {
    val table = TaskEncryptor.forCurrentTask(handle).keyTable()
    new FinalizedWriteContext(java.util.Collections.singletonMap(SparkKmsParquetFormat.KeyTableKey, table))
  }
}
