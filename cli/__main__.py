from lookalike.main import main

main()
