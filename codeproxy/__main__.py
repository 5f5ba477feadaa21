from codeproxy.cli import main

main()
