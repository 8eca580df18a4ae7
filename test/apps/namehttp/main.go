// Command namehttp is the farm tests' application: an HTTP server that
// answers every request with its node name (and the client address it saw),
// so a client can tell which node of a farm served it. Keep-alive works, so
// a test can hold a connection across a change of the farm.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "TCP address to listen on")
	name := flag.String("name", "", "name to answer with (default: hostname)")
	pidfile := flag.String("pidfile", "", "write the pid here once listening")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("namehttp: listen %s: %v", *listen, err)
	}
	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			log.Fatalf("namehttp: %v", err)
		}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s\n", *name, r.RemoteAddr)
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute}
	log.Fatal(srv.Serve(ln))
}
