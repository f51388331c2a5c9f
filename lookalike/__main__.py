from lookalike.cli.main import main

main()
