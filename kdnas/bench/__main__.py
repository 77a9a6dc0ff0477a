from kdnas.bench.run import main

main()
