// bench/java/JmsBench.java — a JMS 1.1 benchmark client on ActiveMQ's own OpenWire client
// (org.apache.activemq.ActiveMQConnectionFactory, stock settings), for comparing ferromq's
// OpenWire transport with ActiveMQ 5.17 (bench/openwire.sh). One class, no build tool:
//
//   CP=/usr/share/java/activemq-client.jar:/usr/share/java/geronimo-jms_1.1_spec.jar:\
//      /usr/share/java/hawtbuf.jar:/usr/share/java/slf4j-api.jar:\
//      /usr/share/java/geronimo-j2ee-management-1.1-spec.jar:/usr/share/java/slf4j-nop.jar
//   javac -cp $CP -d /tmp/jmsbench bench/java/JmsBench.java
//   java -cp /tmp/jmsbench:$CP JmsBench produce --url tcp://127.0.0.1:61616 --producers 16 --count 50000
//   java -cp /tmp/jmsbench:$CP JmsBench consume --url tcp://127.0.0.1:61616 --count 50000
//
// Modes:
//   produce  --producers N threads, each with its own connection and session (non-transacted,
//            AUTO_ACKNOWLEDGE) and one MessageProducer, DeliveryMode.PERSISTENT unless
//            --persistent false. The stock client sends a persistent message outside a
//            transaction synchronously: send() returns once the broker has answered, i.e. (on
//            ActiveMQ with KahaDB defaults) after the journal is fsynced. --count messages in
//            total (split evenly over the threads), each a new BytesMessage whose body is
//            --size bytes (--type text: a TextMessage of --size ASCII characters instead).
//            BytesMessage is the default because its body is exactly --size bytes on the wire
//            and neither side converts it; a TextMessage travels as a string (UTF-8 bytes with
//            a length prefix), which adds encoding work that is not the broker's.
//            Note: with --persistent false the stock client sends asynchronously (no answer
//            awaited), so that is not a synchronous-send figure.
//            Timed from the moment all threads are released together to the last send
//            returning; latency = each send() call (System.nanoTime around it).
//   consume  one connection, one session (AUTO_ACKNOWLEDGE), one consumer with the default
//            prefetch (1000 for a queue), receive() until --count messages have arrived.
//            Timed from createConsumer() to the last message received. Fails if no message
//            arrives for --receive-timeout ms before the count is reached.
//   drain    untimed helper: like consume, but stops at --count (if > 0) or after --idle ms
//            without a message, and does not fail on fewer messages.
//   probe    connect, start, create a session and a producer, close: does the broker speak
//            OpenWire to this client?
//
// Warm-up (--warmup W, default 5000; not counted): before the timed phase, produce sends W
// messages through the same connections to "<queue>.warmup" and then drains them; consume
// sends W messages (one producer) to "<queue>.warmup" and receives them with the same code path
// as the timed phase. So the client's JIT has compiled the send/receive paths when the clock
// starts, and the broker is left as it was found.
//
// Measurement window (optional, for bench/openwire.sh): with --broker-pid PID the RESULT has the
// broker process's CPU seconds (user + system, /proc/PID/stat, USER_HZ = 100) used during the
// timed phase alone; the client's own CPU seconds over that phase are always there. With
// --perf-control CTL,ACK (the fifos of `perf stat -D -1 --control fifo:CTL,ACK`), perf's
// counters are enabled exactly for the timed phase (warm-up excluded).
//
// Output (stdout): one human-readable line, then one machine-readable line "RESULT {json}".
// Progress and errors go to stderr. Exit status: 0 ok, 1 JMS error (or fewer messages than
// expected), 2 bad arguments, 3 timeout: a watchdog halts the JVM after --timeout seconds for
// the whole run (default 300) or --stall seconds without any message sent or received and no
// new phase (default 60), so that a broker that never answers cannot hang a script.
//
// Rates: msg/s = messages / seconds; MB/s = message bodies only, 10^6 bytes per MB.

import java.io.RandomAccessFile;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import javax.jms.BytesMessage;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.JMSException;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;
import javax.jms.TextMessage;

import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQConnectionMetaData;

public final class JmsBench {

    // ------------------------------------------------------------------------------ options
    static String mode;
    static String url = "tcp://127.0.0.1:61616";
    static String queueName = "bench.openwire";
    static String user = null;
    static String password = null;
    static int producers = 1;
    static long count = 10_000;
    static int size = 1024;
    static long warmup = 5_000;
    static boolean persistent = true;
    static boolean textMessages = false;
    static double timeoutSeconds = 300;
    static double stallSeconds = 60;
    static long receiveTimeoutMs = 10_000;
    static long idleMs = 2_000;
    static String label = "";
    static int brokerPid = 0;
    static String perfControl = null;

    // ------------------------------------------------------------------------------ state
    /** What the run is doing now; the watchdog and error messages name it. */
    static volatile String phase = "starting";
    static final AtomicLong progress = new AtomicLong();
    static volatile long progressOf = 0;
    /** First asynchronous connection failure reported by the client's ExceptionListener. */
    static final AtomicReference<JMSException> asyncFailure = new AtomicReference<>();
    static final List<Connection> connections = new ArrayList<>();
    static volatile boolean closing = false;

    static final class BenchFailure extends Exception {
        private static final long serialVersionUID = 1L;
        BenchFailure(String message) { super(message); }
    }

    public static void main(String[] args) {
        try {
            parseArgs(args);
        } catch (IllegalArgumentException e) {
            System.err.println("JmsBench: " + e.getMessage());
            System.err.println(USAGE);
            System.exit(2);
        }
        startWatchdog();
        int rc;
        try {
            switch (mode) {
                case "produce": produce(); break;
                case "consume": consume(false); break;
                case "drain": consume(true); break;
                case "probe": probe(); break;
                default: throw new IllegalStateException(mode);
            }
            rc = 0;
        } catch (JMSException e) {
            System.err.println("JmsBench: ERROR: JMS error during " + phase + " on " + url + ": " + describe(e));
            rc = 1;
        } catch (BenchFailure e) {
            System.err.println("JmsBench: ERROR: " + e.getMessage());
            rc = 1;
        } catch (Throwable e) {
            System.err.println("JmsBench: ERROR: " + e.getClass().getName() + " during " + phase + ": " + describe(e));
            rc = 1;
        }
        if (rc != 0) {
            JMSException async = asyncFailure.get();
            if (async != null) System.err.println("JmsBench: connection failure reported by the client: " + describe(async));
        }
        closing = true;
        phase = "closing connections";
        closeAll();
        System.out.flush();
        System.err.flush();
        System.exit(rc);
    }

    // ------------------------------------------------------------------------------ produce
    static void produce() throws Exception {
        ActiveMQConnectionFactory factory = factory();
        final int n = producers;
        final Session[] sessions = new Session[n];
        final MessageProducer[] timed = new MessageProducer[n];
        final MessageProducer[] warm = new MessageProducer[n];
        final String warmQueue = queueName + ".warmup";
        for (int i = 0; i < n; i++) {
            phase = "connecting producer " + (i + 1) + " of " + n;
            Connection c = connect(factory);
            sessions[i] = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            timed[i] = producerFor(sessions[i], queueName);
            warm[i] = warmup > 0 ? producerFor(sessions[i], warmQueue) : null;
        }
        final byte[] body = payload(size);
        final String text = textMessages ? new String(body, StandardCharsets.US_ASCII) : null;

        if (warmup > 0) {
            phase = "warm-up: sending " + warmup + " messages to " + warmQueue;
            log(phase);
            runProducers(sessions, warm, share(warmup, n), body, text, null, null);
            phase = "warm-up: draining " + warmQueue;
            long got = receive(factory, warmQueue, warmup, receiveTimeoutMs, false, null);
            if (got != warmup) throw new BenchFailure("warm-up: received " + got + " of " + warmup + " messages from " + warmQueue);
        }

        phase = "timed: " + count + " messages by " + n + " producer(s) to " + queueName;
        log(phase);
        long[][] latencies = new long[n][];
        long[] shares = share(count, n);
        for (int i = 0; i < n; i++) latencies[i] = new long[(int) shares[i]];
        Window w = new Window();
        long[] window = runProducers(sessions, timed, shares, body, text, latencies, w);
        double seconds = (window[1] - window[0]) / 1e9;

        long[] all = new long[(int) count];
        int k = 0;
        for (long[] l : latencies) { System.arraycopy(l, 0, all, k, l.length); k += l.length; }
        Arrays.sort(all);
        double sum = 0;
        for (long v : all) sum += v;
        double rate = count / seconds;
        double mbps = rate * size / 1e6;
        double p50 = pct(all, 0.50) / 1e3, p90 = pct(all, 0.90) / 1e3, p99 = pct(all, 0.99) / 1e3,
               p999 = pct(all, 0.999) / 1e3, max = all[all.length - 1] / 1e3, min = all[0] / 1e3,
               mean = sum / all.length / 1e3;

        System.out.println(String.format(Locale.ROOT,
            "produce%s: %d msgs of %d B (%s, %s) by %d producer(s) in %.3f s: %.0f msg/s, %.2f MB/s; send latency p50 %s p99 %s max %s",
            label.isEmpty() ? "" : " [" + label + "]", count, size, textMessages ? "TextMessage" : "BytesMessage",
            persistent ? "persistent" : "non-persistent", n, seconds, rate, mbps, us(p50), us(p99), us(max)));
        StringBuilder j = commonJson("produce");
        j.append(",\"producers\":").append(n)
         .append(",\"seconds\":").append(num(seconds))
         .append(",\"msgs_per_sec\":").append(num(rate))
         .append(",\"mb_per_sec\":").append(num(mbps))
         .append(",\"latency_us\":{\"min\":").append(num(min)).append(",\"p50\":").append(num(p50))
         .append(",\"p90\":").append(num(p90)).append(",\"p99\":").append(num(p99))
         .append(",\"p999\":").append(num(p999)).append(",\"max\":").append(num(max))
         .append(",\"mean\":").append(num(mean)).append("}")
         .append(w.json()).append("}");
        System.out.println("RESULT " + j);
    }

    /**
     * Each thread i sends shares[i] messages through producers[i], all released together.
     * Records each send's nanoseconds into latencies[i] when given. Returns {start, end} in
     * System.nanoTime: the release, and the last send's return. The window, if given, is
     * opened just before the release and closed after the last send.
     */
    static long[] runProducers(Session[] sessions, MessageProducer[] producers, long[] shares, byte[] body,
                               String text, long[][] latencies, Window w) throws Exception {
        final int n = producers.length;
        final CountDownLatch ready = new CountDownLatch(n);
        final CountDownLatch go = new CountDownLatch(1);
        final CountDownLatch done = new CountDownLatch(n);
        final AtomicReference<Throwable> failure = new AtomicReference<>();
        final long[] finished = new long[n];
        progress.set(0);
        long total = 0;
        for (long s : shares) total += s;
        progressOf = total;
        Thread[] threads = new Thread[n];
        for (int t = 0; t < n; t++) {
            final int i = t;
            threads[t] = new Thread(() -> {
                try {
                    ready.countDown();
                    go.await();
                    Session session = sessions[i];
                    MessageProducer p = producers[i];
                    long[] lat = latencies == null ? null : latencies[i];
                    long m = shares[i];
                    for (long s = 0; s < m; s++) {
                        if (failure.get() != null) return;
                        Message msg;
                        if (text != null) {
                            msg = session.createTextMessage(text);
                        } else {
                            BytesMessage b = session.createBytesMessage();
                            b.writeBytes(body);
                            msg = b;
                        }
                        long t0 = System.nanoTime();
                        p.send(msg);
                        long t1 = System.nanoTime();
                        if (lat != null) lat[(int) s] = t1 - t0;
                        progress.incrementAndGet();
                    }
                    finished[i] = System.nanoTime();
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                } finally {
                    done.countDown();
                }
            }, "producer-" + (t + 1));
            threads[t].setDaemon(true);
            threads[t].start();
        }
        ready.await();
        if (w != null) w.begin();
        long start = System.nanoTime();
        go.countDown();
        done.await();
        if (w != null) w.end();
        Throwable f = failure.get();
        if (f != null) {
            if (f instanceof Exception) throw new BenchFailure("JMS error during " + phase + " on " + url
                + " after " + progress.get() + " of " + total + " sends: " + describe(f));
            throw new RuntimeException(f);
        }
        long end = start;
        for (long e : finished) end = Math.max(end, e);
        return new long[] {start, end};
    }

    static MessageProducer producerFor(Session session, String queue) throws JMSException {
        MessageProducer p = session.createProducer(session.createQueue(queue));
        p.setDeliveryMode(persistent ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT);
        return p;
    }

    // ------------------------------------------------------------------------------ consume
    static void consume(boolean drainOnly) throws Exception {
        ActiveMQConnectionFactory factory = factory();
        if (!drainOnly && warmup > 0) {
            String warmQueue = queueName + ".warmup";
            phase = "warm-up: sending " + warmup + " messages to " + warmQueue;
            log(phase);
            Connection c = connect(factory);
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            byte[] body = payload(size);
            String text = textMessages ? new String(body, StandardCharsets.US_ASCII) : null;
            runProducers(new Session[] {s}, new MessageProducer[] {producerFor(s, warmQueue)},
                         new long[] {warmup}, body, text, null, null);
            close(c);
            phase = "warm-up: receiving " + warmup + " messages from " + warmQueue;
            log(phase);
            long got = receive(factory, warmQueue, warmup, receiveTimeoutMs, false, null);
            if (got != warmup) throw new BenchFailure("warm-up: received " + got + " of " + warmup + " messages from " + warmQueue);
        }
        phase = (drainOnly ? "draining " : "timed: receiving " + count + " messages from ") + queueName;
        if (!drainOnly) log(phase);
        long[] window = new long[2];
        long[] bytes = new long[1];
        Window w = drainOnly ? null : new Window();
        long got = drainOnly
            ? receive(factory, queueName, count, idleMs, true, window, bytes, null)
            : receive(factory, queueName, count, receiveTimeoutMs, false, window, bytes, w);
        double seconds = got == 0 ? 0 : (window[1] - window[0]) / 1e9;
        double rate = seconds > 0 ? got / seconds : 0;
        double mbps = seconds > 0 ? bytes[0] / seconds / 1e6 : 0;
        String m = drainOnly ? "drain" : "consume";
        System.out.println(String.format(Locale.ROOT,
            "%s%s: %d msgs (%d body bytes) from %s by 1 consumer in %.3f s: %.0f msg/s, %.2f MB/s",
            m, label.isEmpty() ? "" : " [" + label + "]", got, bytes[0], queueName, seconds, rate, mbps));
        StringBuilder j = commonJson(m);
        j.append(",\"received\":").append(got)
         .append(",\"body_bytes\":").append(bytes[0])
         .append(",\"seconds\":").append(num(seconds))
         .append(",\"msgs_per_sec\":").append(num(rate))
         .append(",\"mb_per_sec\":").append(num(mbps));
        if (w != null) j.append(w.json());
        System.out.println("RESULT " + j.append("}"));
    }

    static long receive(ActiveMQConnectionFactory factory, String queue, long want, long waitMs,
                        boolean untilIdle, long[] window) throws Exception {
        return receive(factory, queue, want, waitMs, untilIdle, window, new long[1], null);
    }

    /**
     * One connection and consumer on queue; receives until want messages (want <= 0 with
     * untilIdle: until idle) or waitMs without a message. window gets {createConsumer, last
     * message} in System.nanoTime, bytes[0] the body bytes received. Fails on an idle gap
     * unless untilIdle. The measurement window w, if given, spans the same interval.
     */
    static long receive(ActiveMQConnectionFactory factory, String queue, long want, long waitMs,
                        boolean untilIdle, long[] window, long[] bytes, Window w) throws Exception {
        Connection c = connect(factory);
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue(queue);
        progress.set(0);
        progressOf = want;
        long got = 0, last = 0, body = 0;
        if (w != null) w.begin();
        long start = System.nanoTime();
        MessageConsumer consumer = s.createConsumer(q);
        while (want <= 0 || got < want) {
            Message m = consumer.receive(waitMs);
            if (m == null) {
                if (untilIdle) break;
                throw new BenchFailure("during " + phase + " on " + url + ": received " + got + " of " + want
                    + " messages, then nothing for " + waitMs + " ms");
            }
            last = System.nanoTime();
            if (m instanceof BytesMessage) body += ((BytesMessage) m).getBodyLength();
            else if (m instanceof TextMessage) { String t = ((TextMessage) m).getText(); body += t == null ? 0 : t.length(); }
            got++;
            progress.incrementAndGet();
        }
        if (w != null) w.end();
        if (window != null) { window[0] = start; window[1] = got == 0 ? start : last; }
        bytes[0] = body;
        consumer.close();
        close(c);
        return got;
    }

    // ------------------------------------------------------------------------------ probe
    static void probe() throws Exception {
        ActiveMQConnectionFactory factory = factory();
        phase = "connecting";
        long t0 = System.nanoTime();
        Connection c = connect(factory);
        phase = "creating a session and a producer";
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        s.createProducer(s.createQueue(queueName)).close();
        String broker = String.valueOf(((org.apache.activemq.ActiveMQConnection) c).getBrokerName());
        double ms = (System.nanoTime() - t0) / 1e6;
        System.out.println(String.format(Locale.ROOT, "probe: %s answers OpenWire (broker name %s) in %.1f ms", url, broker, ms));
        System.out.println("RESULT " + commonJson("probe").append(",\"ok\":true,\"broker_name\":").append(str(broker))
            .append(",\"connect_ms\":").append(num(ms)).append("}"));
    }

    // ------------------------------------------------------------------------------ window
    /** CPU of broker and client, and perf's counters, over the timed phase only. */
    static final class Window {
        static final ExecutorService ackReader = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "perf-ack");
            t.setDaemon(true);
            return t;
        });
        static RandomAccessFile ctl, ack;
        static boolean perfGaveUp = false;
        boolean perfCounted = false;
        double broker0 = -1, brokerSeconds = -1;
        long client0;
        double clientSeconds = -1;

        void begin() {
            perfCounted = perf("enable");
            broker0 = brokerCpuSeconds();
            client0 = clientCpuNanos();
        }

        void end() {
            clientSeconds = (clientCpuNanos() - client0) / 1e9;
            double b = brokerCpuSeconds();
            brokerSeconds = broker0 >= 0 && b >= 0 ? b - broker0 : -1;
            perfCounted &= perf("disable");
        }

        String json() {
            return ",\"window\":{\"client_cpu_s\":" + num(clientSeconds)
                + ",\"broker_pid\":" + (brokerPid > 0 ? brokerPid : "null")
                + ",\"broker_cpu_s\":" + (brokerSeconds >= 0 ? num(brokerSeconds) : "null")
                + ",\"perf_counted\":" + perfCounted + "}";
        }

        static long clientCpuNanos() {
            java.lang.management.OperatingSystemMXBean os = ManagementFactory.getOperatingSystemMXBean();
            if (os instanceof com.sun.management.OperatingSystemMXBean)
                return ((com.sun.management.OperatingSystemMXBean) os).getProcessCpuTime();
            return 0;
        }

        /** utime + stime of the broker process, all threads; -1 when unknown. */
        static double brokerCpuSeconds() {
            if (brokerPid <= 0) return -1;
            try {
                String stat = new String(Files.readAllBytes(Paths.get("/proc/" + brokerPid + "/stat")), StandardCharsets.US_ASCII);
                String[] f = stat.substring(stat.lastIndexOf(')') + 2).trim().split(" +");
                // f[0] is field 3 (state); utime and stime are fields 14 and 15.
                return (Long.parseLong(f[11]) + Long.parseLong(f[12])) / 100.0;   // USER_HZ
            } catch (Exception e) {
                return -1;
            }
        }

        /** Sends a command to perf's control fifo and waits (at most 5 s) for its ack. */
        static boolean perf(String command) {
            if (perfControl == null || perfGaveUp) return false;
            try {
                if (ctl == null) {
                    String[] p = perfControl.split(",");
                    // "rw": opening a fifo read-write never blocks, even when perf is gone.
                    ctl = new RandomAccessFile(p[0], "rw");
                    ack = new RandomAccessFile(p[1], "rw");
                }
                ctl.write((command + "\n").getBytes(StandardCharsets.US_ASCII));
                Future<Boolean> acked = ackReader.submit(() -> {
                    StringBuilder b = new StringBuilder();
                    while (b.indexOf("ack") < 0) {
                        int c = ack.read();
                        if (c < 0) return false;
                        b.append((char) c);
                    }
                    return true;
                });
                if (acked.get(5, TimeUnit.SECONDS)) return true;
            } catch (Exception e) {
                log("perf control: " + describe(e));
            }
            log("perf control " + perfControl + " did not acknowledge '" + command + "'; not counting with perf");
            perfGaveUp = true;
            return false;
        }
    }

    // ------------------------------------------------------------------------------ helpers
    static ActiveMQConnectionFactory factory() {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(url);
        if (user != null) { f.setUserName(user); f.setPassword(password); }
        return f;
    }

    static Connection connect(ActiveMQConnectionFactory factory) throws JMSException {
        Connection c = factory.createConnection();
        synchronized (connections) { connections.add(c); }
        c.setExceptionListener(e -> {
            // Printed here only while the run is still going; after an error main() prints it.
            if (asyncFailure.compareAndSet(null, e) && !closing)
                System.err.println("JmsBench: connection failure reported by the client during " + phase + ": " + describe(e));
        });
        c.start();
        return c;
    }

    static void close(Connection c) {
        try { c.close(); } catch (JMSException ignored) { }
        synchronized (connections) { connections.remove(c); }
    }

    static void closeAll() {
        List<Connection> cs;
        synchronized (connections) { cs = new ArrayList<>(connections); }
        for (Connection c : cs) close(c);
    }

    /**
     * Halts the JVM with status 3 when the whole run exceeds --timeout, or when nothing moves
     * (no message sent or received, no new phase) for --stall seconds: a broker that accepts a
     * connection but never answers must not hang the caller.
     */
    static void startWatchdog() {
        final long deadline = System.nanoTime() + (long) (timeoutSeconds * 1e9);
        final long stallNanos = (long) (stallSeconds * 1e9);
        Thread w = new Thread(() -> {
            String lastPhase = phase;
            long lastProgress = progress.get();
            long lastMove = System.nanoTime();
            String why;
            while (true) {
                try { Thread.sleep(200); } catch (InterruptedException e) { return; }
                long now = System.nanoTime();
                String ph = phase;
                long pr = progress.get();
                if (ph != lastPhase || pr != lastProgress) { lastPhase = ph; lastProgress = pr; lastMove = now; }
                if (now - deadline >= 0) {
                    why = String.format(Locale.ROOT, "not finished after %.0f s (--timeout)", timeoutSeconds);
                    break;
                }
                if (now - lastMove >= stallNanos) {
                    why = String.format(Locale.ROOT, "no progress for %.0f s (--stall)", stallSeconds);
                    break;
                }
            }
            String p = progressOf > 0 ? " (" + progress.get() + " of " + progressOf + " messages)" : "";
            System.err.println(String.format(Locale.ROOT, "JmsBench: ERROR: timeout: %s on %s: %s%s", phase, url, why, p));
            JMSException async = asyncFailure.get();
            if (async != null) System.err.println("JmsBench: connection failure reported by the client: " + describe(async));
            System.err.flush();
            Runtime.getRuntime().halt(3);
        }, "watchdog");
        w.setDaemon(true);
        w.start();
    }

    static long[] share(long total, int n) {
        long[] s = new long[n];
        for (int i = 0; i < n; i++) s[i] = total / n + (i < total % n ? 1 : 0);
        return s;
    }

    static byte[] payload(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte) ('a' + (i * 7 + i / 26) % 26);   // ASCII, not all one byte
        return b;
    }

    /** Nearest-rank percentile of a sorted array. */
    static long pct(long[] sorted, double q) {
        int i = (int) Math.ceil(q * sorted.length) - 1;
        return sorted[Math.max(0, Math.min(sorted.length - 1, i))];
    }

    static String us(double micros) {
        if (micros >= 10_000) return String.format(Locale.ROOT, "%.1f ms", micros / 1e3);
        if (micros >= 1_000) return String.format(Locale.ROOT, "%.2f ms", micros / 1e3);
        return String.format(Locale.ROOT, "%.0f µs", micros);
    }

    static StringBuilder commonJson(String m) {
        StringBuilder j = new StringBuilder("{");
        j.append("\"mode\":").append(str(m))
         .append(",\"label\":").append(str(label))
         .append(",\"url\":").append(str(url))
         .append(",\"queue\":").append(str(queueName))
         .append(",\"count\":").append(count)
         .append(",\"size\":").append(size)
         .append(",\"message_type\":").append(str(textMessages ? "TextMessage" : "BytesMessage"))
         .append(",\"persistent\":").append(persistent)
         .append(",\"warmup\":").append(warmup)
         .append(",\"client\":").append(str("ActiveMQ " + ActiveMQConnectionMetaData.PROVIDER_VERSION
                                              + " OpenWire JMS client, Java " + System.getProperty("java.version")));
        return j;
    }

    static String num(double d) {
        if (Double.isNaN(d) || Double.isInfinite(d)) return "null";
        return String.format(Locale.ROOT, "%.3f", d);
    }

    static String str(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') b.append('\\').append(ch);
            else if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
            else b.append(ch);
        }
        return b.append('"').toString();
    }

    /** The exception and its causes on one line. */
    static String describe(Throwable e) {
        StringBuilder b = new StringBuilder();
        Throwable t = e;
        for (int depth = 0; t != null && depth < 6; depth++) {
            if (depth > 0) b.append(" <- caused by ");
            b.append(t.getClass().getSimpleName());
            if (t.getMessage() != null) b.append(": ").append(t.getMessage());
            Throwable next = t.getCause();
            if (next == null && t instanceof JMSException) next = ((JMSException) t).getLinkedException();
            t = next == t ? null : next;
        }
        return b.toString();
    }

    static void log(String s) { System.err.println("JmsBench: " + s); }

    // ------------------------------------------------------------------------------ arguments
    static final String USAGE =
        "usage: JmsBench produce|consume|drain|probe [options]\n"
      + "  --url URL              broker URL for ActiveMQConnectionFactory [tcp://127.0.0.1:61616]\n"
      + "  --queue NAME           queue [bench.openwire]\n"
      + "  --producers N          produce: threads, each with its own connection and session [1]\n"
      + "  --count N              messages (produce: in total; consume: to receive; drain: at most, 0 = until idle) [10000]\n"
      + "  --size BYTES           message body size [1024]\n"
      + "  --type bytes|text      BytesMessage or TextMessage of --size ASCII characters [bytes]\n"
      + "  --persistent true|false  delivery mode of produced messages [true]\n"
      + "  --warmup N             messages sent and received before the timed phase, not counted [5000]\n"
      + "  --timeout SECONDS      whole-run watchdog; exit 3 when exceeded [300]\n"
      + "  --stall SECONDS        exit 3 when no message moves and no phase changes for this long [60]\n"
      + "  --receive-timeout MS   consume: fail when no message arrives for this long [10000]\n"
      + "  --idle MS              drain: stop after this long without a message [2000]\n"
      + "  --user U --password P  credentials, if the broker wants them\n"
      + "  --label TEXT           copied into the output\n"
      + "  --broker-pid PID       report the broker process's CPU seconds over the timed phase\n"
      + "  --perf-control CTL,ACK enable `perf stat --control fifo:CTL,ACK` counters for the timed phase only";

    static void parseArgs(String[] a) {
        if (a.length == 0) throw new IllegalArgumentException("no mode given");
        mode = a[0];
        if (!Arrays.asList("produce", "consume", "drain", "probe").contains(mode))
            throw new IllegalArgumentException("unknown mode " + mode);
        for (int i = 1; i < a.length; i++) {
            String k = a[i];
            if (k.equals("-h") || k.equals("--help")) { System.out.println(USAGE); System.exit(0); }
            if (i + 1 >= a.length) throw new IllegalArgumentException(k + " needs a value");
            String v = a[++i];
            try {
                switch (k) {
                    case "--url": url = v; break;
                    case "--queue": queueName = v; break;
                    case "--producers": producers = Integer.parseInt(v); break;
                    case "--count": count = Long.parseLong(v); break;
                    case "--size": size = Integer.parseInt(v); break;
                    case "--type":
                        if (!v.equals("bytes") && !v.equals("text")) throw new IllegalArgumentException("--type bytes|text");
                        textMessages = v.equals("text"); break;
                    case "--persistent":
                        if (!v.equals("true") && !v.equals("false")) throw new IllegalArgumentException("--persistent true|false");
                        persistent = v.equals("true"); break;
                    case "--warmup": warmup = Long.parseLong(v); break;
                    case "--timeout": timeoutSeconds = Double.parseDouble(v); break;
                    case "--stall": stallSeconds = Double.parseDouble(v); break;
                    case "--receive-timeout": receiveTimeoutMs = Long.parseLong(v); break;
                    case "--idle": idleMs = Long.parseLong(v); break;
                    case "--user": user = v; break;
                    case "--password": password = v; break;
                    case "--label": label = v; break;
                    case "--broker-pid": brokerPid = Integer.parseInt(v); break;
                    case "--perf-control":
                        if (v.split(",").length != 2) throw new IllegalArgumentException("--perf-control CTL,ACK");
                        perfControl = v; break;
                    default: throw new IllegalArgumentException("unknown option " + k);
                }
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(k + ": not a number: " + v);
            }
        }
        if (producers < 1) throw new IllegalArgumentException("--producers must be >= 1");
        if (size < 0) throw new IllegalArgumentException("--size must be >= 0");
        if (warmup < 0) throw new IllegalArgumentException("--warmup must be >= 0");
        if (timeoutSeconds <= 0 || stallSeconds <= 0) throw new IllegalArgumentException("--timeout and --stall must be > 0");
        if (receiveTimeoutMs <= 0 || idleMs <= 0) throw new IllegalArgumentException("timeouts must be > 0");
        if (!mode.equals("drain") && !mode.equals("probe") && count < 1) throw new IllegalArgumentException("--count must be >= 1");
        if (mode.equals("produce") && count > Integer.MAX_VALUE) throw new IllegalArgumentException("--count too large");
    }
}
