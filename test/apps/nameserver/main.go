// Command nameserver is the test application of the end-to-end tests and
// benchmarks: a TCP service that answers every connection with its node
// name, so a client can tell which node served it through a VIP.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	listen := flag.String("listen", ":7000", "TCP address to listen on")
	name := flag.String("name", "", "name to answer with (default: hostname)")
	pidfile := flag.String("pidfile", "", "write the pid here once listening")
	flag.Parse()
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("nameserver: listen %s: %v", *listen, err)
	}
	if *pidfile != "" {
		if err := os.WriteFile(*pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			log.Fatalf("nameserver: %v", err)
		}
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Printf("nameserver: accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			fmt.Fprintln(c, *name)
		}()
	}
}
