// Command loadtool holds the parts of the proxy benchmark that wrk and vegeta do not cover (standard library
// only, so it builds offline in seconds):
//
//	loadtool sse-upstream -listen ADDR [-interval 100ms] [-chunks 100]
//	    a slow OpenAI-style upstream: every POST gets a text/event-stream answer with one chunk every
//	    interval (the first at once), then `data: [DONE]`.
//	loadtool streams -url URL [-n 1000] [-ramp 1s]
//	    n concurrent streaming chat requests (started evenly over ramp); prints time to first body byte
//	    (p50/p99/max), how many streams ended with [DONE], and the wall time.
//	loadtool startup -url HEALTHZ [-runs 10] -- CMD ARGS...
//	    starts CMD runs times and prints the time from exec to the first 200 from HEALTHZ (polled every
//	    200 µs), then stops it with SIGTERM.
//
// Output lines start with RESULT and hold key=value pairs, for bench/proxy-bench.sh to read.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadtool sse-upstream|streams|startup [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sse-upstream":
		err = sseUpstream(os.Args[2:])
	case "streams":
		err = streams(os.Args[2:])
	case "startup":
		err = startup(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtool:", err)
		os.Exit(1)
	}
}

const chunkEvent = `data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"fake-model","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}` + "\n\n"

func sseUpstream(args []string) error {
	fs := flag.NewFlagSet("sse-upstream", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	interval := fs.Duration("interval", 100*time.Millisecond, "pause between chunks")
	chunks := fs.Int("chunks", 100, "chunks per stream")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	os.Stdout.Sync()
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/healthz" {
			w.Write([]byte("ok"))
			return
		}
		w.Header().Set("content-type", "text/event-stream")
		w.WriteHeader(200)
		flusher := w.(http.Flusher)
		ticker := time.NewTicker(*interval)
		defer ticker.Stop()
		for i := 0; i < *chunks; i++ {
			if i > 0 {
				select {
				case <-ticker.C:
				case <-r.Context().Done():
					return
				}
			}
			if _, err := io.WriteString(w, chunkEvent); err != nil {
				return
			}
			flusher.Flush()
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	return http.Serve(ln, handler)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted)) + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d.Microseconds())/1000) }

func streams(args []string) error {
	fs := flag.NewFlagSet("streams", flag.ExitOnError)
	url := fs.String("url", "", "chat completions URL")
	n := fs.Int("n", 1000, "concurrent streams")
	ramp := fs.Duration("ramp", time.Second, "start streams evenly over this long")
	fs.Parse(args)
	transport := &http.Transport{
		MaxIdleConns:        *n,
		MaxIdleConnsPerHost: *n,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	client := &http.Client{Transport: transport, Timeout: 5 * time.Minute}
	ttfb := make([]time.Duration, *n)
	done := make([]bool, *n)
	errs := make([]error, *n)
	var wg sync.WaitGroup
	start := time.Now()
	step := *ramp / time.Duration(*n)
	for i := 0; i < *n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			time.Sleep(time.Until(start.Add(step * time.Duration(i))))
			t0 := time.Now()
			// A distinct body per stream: identical requests in flight at once would be recognised by the
			// proxy as the caller's own re-sends (--caller-retries).
			body := fmt.Sprintf(`{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder %d"}],"stream":true}`, i)
			req, _ := http.NewRequest("POST", *url, strings.NewReader(body))
			req.Header.Set("content-type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 4096)
			var all []byte
			first := true
			for {
				k, err := resp.Body.Read(buf)
				if k > 0 && first {
					ttfb[i] = time.Since(t0)
					first = false
				}
				all = append(all, buf[:k]...)
				if len(all) > 64 {
					all = all[len(all)-64:]
				}
				if err != nil {
					break
				}
			}
			done[i] = resp.StatusCode == 200 && strings.Contains(string(all), "[DONE]")
		}(i)
	}
	wg.Wait()
	wall := time.Since(start)
	var got []time.Duration
	completed, failed := 0, 0
	var firstErr error
	for i := range ttfb {
		if done[i] {
			completed++
			got = append(got, ttfb[i])
		} else {
			failed++
			if firstErr == nil {
				firstErr = errs[i]
			}
		}
	}
	sort.Slice(got, func(a, b int) bool { return got[a] < got[b] })
	fmt.Printf("RESULT streams=%d completed=%d failed=%d ttfb_p50_ms=%s ttfb_p99_ms=%s ttfb_max_ms=%s wall_s=%.2f\n",
		*n, completed, failed, ms(percentile(got, 50)), ms(percentile(got, 99)), ms(percentile(got, 100)), wall.Seconds())
	if firstErr != nil {
		fmt.Fprintln(os.Stderr, "first error:", firstErr)
	}
	return nil
}

func startup(args []string) error {
	fs := flag.NewFlagSet("startup", flag.ExitOnError)
	url := fs.String("url", "", "health URL")
	runs := fs.Int("runs", 10, "how many starts")
	fs.Parse(args)
	cmdline := fs.Args()
	if len(cmdline) == 0 {
		return fmt.Errorf("startup: no command")
	}
	client := &http.Client{Timeout: 100 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	var took []time.Duration
	for r := 0; r < *runs; r++ {
		cmd := exec.Command(cmdline[0], cmdline[1:]...)
		cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
		t0 := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		ready := false
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		for ctx.Err() == nil {
			resp, err := client.Get(*url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ready = true
					break
				}
			}
			time.Sleep(200 * time.Microsecond)
		}
		elapsed := time.Since(t0)
		cancel()
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if !ready {
			return fmt.Errorf("startup: %s never answered", *url)
		}
		took = append(took, elapsed)
	}
	sort.Slice(took, func(a, b int) bool { return took[a] < took[b] })
	fmt.Printf("RESULT runs=%d start_min_ms=%s start_p50_ms=%s start_max_ms=%s\n",
		*runs, ms(took[0]), ms(percentile(took, 50)), ms(took[len(took)-1]))
	return nil
}
