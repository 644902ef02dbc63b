from decision_core.cli import main

main()
