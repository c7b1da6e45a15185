from spark_kms.cli import main

main()
