package io.sparkkms.fastpath

import scala.collection.mutable

import org.apache.spark.TaskContext
import org.apache.spark.rdd.RDD
import org.apache.spark.sql.SparkSession
import org.apache.spark.sql.catalyst.InternalRow
import org.apache.spark.sql.catalyst.expressions.{Attribute, AttributeReference, Expression, Literal}
import org.apache.spark.sql.catalyst.rules.Rule
import org.apache.spark.sql.execution.{ColumnarRule, FilterExec, ProjectExec, SparkPlan, UnaryExecNode}
import org.apache.spark.sql.execution.aggregate.BaseAggregateExec
import org.apache.spark.sql.execution.metric.{SQLMetric, SQLMetrics}
import org.apache.spark.sql.internal.SQLConf
import org.apache.spark.sql.vectorized.{ColumnVector, ColumnarBatch}

/**
 * Decrypts whole column batches: each [[DecryptCell]] of `cells` (over a column of the child) becomes the
 * attribute of `outputs` at the same position, decrypted batch by batch with one JNI call per column
 * ([[CellDecryptor.decryptColumn]]). The child's vectors pass through as they are; the decrypted ones
 * ([[DecryptedVector]]) are reused batch after batch and zeroed when the task ends. Spark puts a ColumnarToRow
 * above it. Its strings name the columns and the first 8 hex characters of the key handle, nothing else.
 */
case class DecryptColumnarExec(child: SparkPlan, cells: Seq[DecryptCell], outputs: Seq[Attribute])
    extends UnaryExecNode {

  override def output: Seq[Attribute] = child.output ++ outputs
  override def supportsColumnar: Boolean = true

  override lazy val metrics: Map[String, SQLMetric] = Map(
    "decryptedCells" -> SQLMetrics.createMetric(sparkContext, "number of cells decrypted"),
    "decryptTime" -> SQLMetrics.createNanoTimingMetric(sparkContext, "time decrypting"))

  override def vectorTypes: Option[Seq[String]] =
    child.vectorTypes.map(_ ++ Seq.fill(outputs.size)(classOf[DecryptedVector].getName))

  override protected def doExecute(): RDD[InternalRow] =
    throw new IllegalStateException(s"$nodeName is columnar only")

  override protected def doExecuteColumnar(): RDD[ColumnarBatch] = {
    val ordinals = cells.map { c =>
      val attr = c.cell.asInstanceOf[Attribute]
      child.output.indexWhere(_.exprId == attr.exprId)
    }.toArray
    val configs = cells.map(_.configBytes).toArray
    val types = cells.map(_.dataType).toArray
    val decryptedCells = longMetric("decryptedCells")
    val decryptTime = longMetric("decryptTime")
    child.executeColumnar().mapPartitions { batches =>
      val decryptors = configs.map(c => new CellDecryptor(DecryptBase.Config.parse(c)))
      val vectors = types.map(t => new DecryptedVector(t))
      Option(TaskContext.get()).foreach(_.addTaskCompletionListener[Unit](_ => vectors.foreach(_.close())))
      batches.map { batch =>
        val n = batch.numRows()
        val width = batch.numCols()
        val columns = new Array[ColumnVector](width + vectors.length)
        var i = 0
        while (i < width) {
          columns(i) = batch.column(i)
          i += 1
        }
        val start = System.nanoTime()
        var j = 0
        while (j < vectors.length) {
          decryptors(j).decryptColumn(batch.column(ordinals(j)), n, vectors(j))
          columns(width + j) = vectors(j)
          j += 1
        }
        decryptTime += System.nanoTime() - start
        decryptedCells += n.toLong * vectors.length
        new ColumnarBatch(columns, n)
      }
    }
  }

  private def describe: String = {
    val columns = cells.zip(outputs).map { case (c, o) => s"${c.cell} -> $o" }.mkString(", ")
    val handles = cells.map(_.handlePrefix).distinct.mkString(", ")
    s"[$columns] ($handles)"
  }

  override def simpleString(maxFields: Int): String = s"$nodeName $describe"
  override def verboseString(maxFields: Int): String = simpleString(maxFields)
  override protected def stringArgs: Iterator[Any] = Iterator(describe) // explain("formatted"): no config bytes
  override def nodeName: String = "SparkKmsDecryptColumnar"

  override protected def withNewChildInternal(newChild: SparkPlan): DecryptColumnarExec = copy(child = newChild)
}

/**
 * Puts [[DecryptColumnarExec]] under a Project, Filter or (partial) aggregate whose child is columnar (the
 * Parquet vectorized scan) and whose expressions decrypt columns of that child, and replaces those
 * [[DecryptCell]]s by the exec's attributes. Runs before Spark inserts its columnar-to-row transitions.
 * `spark.spark_kms.sql.fastPath.columnar=false` (a runtime setting) turns it off: the expressions then decrypt
 * row by row.
 */
object DecryptColumnarRule extends Rule[SparkPlan] {
  val Switch = "spark.spark_kms.sql.fastPath.columnar"

  private def enabled: Boolean = !SQLConf.get.getConfString(Switch, "true").trim.equalsIgnoreCase("false")

  override def apply(plan: SparkPlan): SparkPlan =
    if (!enabled) plan
    else plan.transformUp {
      case p @ (_: ProjectExec | _: FilterExec | _: BaseAggregateExec)
          if p.children.size == 1 && p.children.head.supportsColumnar => rewrite(p)
    }

  private def rewrite(p: SparkPlan): SparkPlan = {
    val child = p.children.head
    val inputs = child.outputSet
    val found = mutable.LinkedHashMap[Expression, (DecryptCell, AttributeReference)]()
    p.expressions.foreach(_.foreach {
      case d @ DecryptCell(a: Attribute, Literal(_: Array[Byte], _), _) if inputs.contains(a) =>
        found.getOrElseUpdate(d.canonicalized, (d, AttributeReference(a.name, d.dataType, nullable = true)()))
      case _ =>
    })
    if (found.isEmpty) {
      p
    } else {
      val exec = DecryptColumnarExec(child, found.values.map(_._1).toSeq, found.values.map(_._2).toSeq)
      val replaced = p.withNewChildren(Seq(exec)).transformExpressions {
        case d: DecryptCell if found.contains(d.canonicalized) => found(d.canonicalized)._2
      }
      if (replaced.output == p.output) replaced else ProjectExec(p.output, replaced)
    }
  }
}

/** The [[ColumnarRule]] the extension injects. */
class DecryptColumnarRules(session: SparkSession) extends ColumnarRule {
  override def preColumnarTransitions: Rule[SparkPlan] = DecryptColumnarRule
}
