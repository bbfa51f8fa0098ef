// Command pause is the pod sandbox ("pause") process for the real test node: it holds the pod's
// namespaces and does nothing until it is told to stop. SIGTERM or SIGINT ends it with status 0.
// Zombie reaping is not needed here (pods do not share the process namespace).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("apwa pause")
		return
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
