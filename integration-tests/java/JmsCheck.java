import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.Serializable;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Enumeration;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import javax.jms.BytesMessage;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.Destination;
import javax.jms.InvalidClientIDException;
import javax.jms.JMSException;
import javax.jms.MapMessage;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.ObjectMessage;
import javax.jms.Queue;
import javax.jms.QueueBrowser;
import javax.jms.Session;
import javax.jms.StreamMessage;
import javax.jms.TemporaryQueue;
import javax.jms.TextMessage;
import javax.jms.Topic;
import javax.jms.TopicSubscriber;

import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQMessageConsumer;
import org.apache.activemq.ActiveMQSession;
import org.apache.activemq.ScheduledMessage;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.command.ActiveMQMessage;
import org.apache.activemq.command.ActiveMQTempQueue;

/**
 * JmsCheck: drives a broker with the stock ActiveMQ 5.x JMS client, one scenario per run, the
 * way an application would (JMS 1.1 API only, plus {@link ActiveMQConnectionFactory} and
 * {@link ActiveMQSession#INDIVIDUAL_ACKNOWLEDGE}).
 *
 * <p>Usage: {@code java -cp CLASSES:CLIENT_CLASSPATH JmsCheck SCENARIO BROKER_URL [key=value...]}.
 * Every check prints {@code OK <what>}; the first that does not hold prints
 * {@code FAIL <what>: expected .. got ..} and ends the run. The last line is
 * {@code PASS <scenario>} (exit 0) or {@code FAILED <scenario>} (exit 1; 2 for an unexpected
 * exception, 3 for the watchdog). Every receive has a timeout ({@code receive_timeout_ms},
 * default 20000), and a watchdog ({@code timeout} seconds, default 60, or $JMSCHECK_TIMEOUT)
 * ends a run that hangs anyway. Each run uses fresh destinations named
 * {@code <prefix>.<what>} ({@code prefix}, default {@code jmscheck.<scenario>.<random>}), so
 * runs can share a broker. "Nothing more arrives" is checked without waiting for silence: a
 * sentinel message is sent after the fact and must be the next one received.
 *
 * <p>Options: {@code timeout=SECS}, {@code receive_timeout_ms=MS}, {@code prefix=NAME},
 * {@code count=N} (message count of queue-text; exact count of failover-produce),
 * {@code queue=NAME} (failover-produce, failover-consume), {@code min=N}, {@code max=N}
 * (failover-produce without count: sends until a line {@code stop} on standard input, at least
 * min and at most max), {@code transacted=N} (failover-produce and failover-consume: a
 * transacted session committing every N messages), {@code compression=true} (every connection sets
 * {@code useCompression}, as {@code jms.useCompression=true} on a URL does).
 */
public final class JmsCheck {

    /** A check that did not hold; the message is the whole {@code FAIL ...} line. */
    static final class Failure extends Exception {
        private static final long serialVersionUID = 1L;

        Failure(String message) {
            super(message);
        }
    }

    interface Scenario {
        void run() throws Exception;
    }

    static final Map<String, Scenario> SCENARIOS = new LinkedHashMap<>();

    static {
        SCENARIOS.put("queue-text", JmsCheck::queueText);
        SCENARIOS.put("message-types", JmsCheck::messageTypes);
        SCENARIOS.put("ack-auto", JmsCheck::ackAuto);
        SCENARIOS.put("ack-client", JmsCheck::ackClient);
        SCENARIOS.put("ack-dups-ok", JmsCheck::ackDupsOk);
        SCENARIOS.put("ack-client-out-of-order", JmsCheck::ackClientOutOfOrder);
        SCENARIOS.put("ack-individual", JmsCheck::ackIndividual);
        SCENARIOS.put("tx-producer", JmsCheck::txProducer);
        SCENARIOS.put("tx-consumer", JmsCheck::txConsumer);
        SCENARIOS.put("topic-pubsub", JmsCheck::topicPubSub);
        SCENARIOS.put("durable-topic", JmsCheck::durableTopic);
        SCENARIOS.put("client-id", JmsCheck::clientId);
        SCENARIOS.put("wildcard-topic", JmsCheck::wildcardTopic);
        SCENARIOS.put("virtual-topic", JmsCheck::virtualTopic);
        SCENARIOS.put("composite-destinations", JmsCheck::compositeDestinations);
        SCENARIOS.put("exclusive-consumer", JmsCheck::exclusiveConsumer);
        SCENARIOS.put("message-groups", JmsCheck::messageGroups);
        SCENARIOS.put("no-local", JmsCheck::noLocal);
        SCENARIOS.put("consumer-priority", JmsCheck::consumerPriority);
        SCENARIOS.put("temp-queue-reply", JmsCheck::tempQueueReply);
        SCENARIOS.put("selectors", JmsCheck::selectors);
        SCENARIOS.put("browser", JmsCheck::browser);
        SCENARIOS.put("browser-deep", JmsCheck::browserDeep);
        SCENARIOS.put("prefetch-zero", JmsCheck::prefetchZero);
        SCENARIOS.put("stomp-interop", JmsCheck::stompInterop);
        SCENARIOS.put("poison-dlq", JmsCheck::poisonDlq);
        SCENARIOS.put("individual-dlq", JmsCheck::individualDlq);
        SCENARIOS.put("failover-produce", JmsCheck::failoverProduce);
        SCENARIOS.put("failover-consume", JmsCheck::failoverConsume);
        SCENARIOS.put("flow-control", JmsCheck::flowControl);
        SCENARIOS.put("oversized", JmsCheck::oversized);
        SCENARIOS.put("producer-window", JmsCheck::producerWindow);
        SCENARIOS.put("scheduled-delay", JmsCheck::scheduledDelay);
        SCENARIOS.put("scheduled-topic-later", JmsCheck::scheduledTopicLater);
        SCENARIOS.put("scheduler-management", JmsCheck::schedulerManagement);
    }

    static String scenario;
    static String url;
    static final Map<String, String> OPTS = new TreeMap<>();
    static String prefix;
    static long receiveTimeoutMs;
    static final List<Connection> OPEN = Collections.synchronizedList(new ArrayList<>());

    public static void main(String[] args) {
        if (args.length < 2 || !SCENARIOS.containsKey(args[0])) {
            System.err.println("usage: JmsCheck SCENARIO BROKER_URL [key=value...]");
            System.err.println("scenarios: " + String.join(" ", SCENARIOS.keySet()));
            System.exit(64);
        }
        scenario = args[0];
        url = args[1];
        for (int i = 2; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            if (eq <= 0) {
                System.err.println("not key=value: " + args[i]);
                System.exit(64);
            }
            OPTS.put(args[i].substring(0, eq), args[i].substring(eq + 1));
        }
        String env = System.getenv("JMSCHECK_TIMEOUT");
        long watchdog = longOpt("timeout",
                env != null && !env.isEmpty() ? Long.parseLong(env) : 60);
        receiveTimeoutMs = longOpt("receive_timeout_ms", 20000);
        prefix = OPTS.getOrDefault("prefix",
                "jmscheck." + scenario + "." + UUID.randomUUID().toString().substring(0, 8));
        startWatchdog(watchdog);
        System.out.println("RUN " + scenario + " against " + url + " (destinations " + prefix
                + ".*, watchdog " + watchdog + " s)");
        int code;
        try {
            SCENARIOS.get(scenario).run();
            closeAll();
            System.out.println("PASS " + scenario);
            code = 0;
        } catch (Failure f) {
            System.out.println(f.getMessage());
            System.out.println("FAILED " + scenario);
            code = 1;
        } catch (Throwable t) {
            System.out.println("FAIL " + scenario + ": unexpected exception " + describe(t));
            t.printStackTrace(System.out);
            System.out.println("FAILED " + scenario);
            code = 2;
        }
        System.out.flush();
        System.err.flush();
        // Connections of a failed run are not closed: closing waits for a broker that may never
        // answer. halt() also ends the client's non-daemon threads.
        Runtime.getRuntime().halt(code);
    }

    static void startWatchdog(long seconds) {
        Thread t = new Thread(() -> {
            try {
                Thread.sleep(seconds * 1000);
            } catch (InterruptedException e) {
                return;
            }
            System.out.println("FAIL " + scenario + ": watchdog: not finished within " + seconds
                    + " s; threads:");
            for (Map.Entry<Thread, StackTraceElement[]> e : Thread.getAllStackTraces().entrySet()) {
                System.out.println("  thread " + e.getKey().getName());
                for (StackTraceElement frame : e.getValue()) {
                    System.out.println("      at " + frame);
                }
            }
            System.out.println("FAILED " + scenario);
            System.out.flush();
            Runtime.getRuntime().halt(3);
        }, "jmscheck-watchdog");
        t.setDaemon(true);
        t.start();
    }

    static String describe(Throwable t) {
        StringBuilder s = new StringBuilder(t.toString());
        for (Throwable c = t.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
            s.append(" / caused by ").append(c);
        }
        if (t instanceof JMSException && ((JMSException) t).getLinkedException() != null) {
            s.append(" / linked ").append(((JMSException) t).getLinkedException());
        }
        return s.toString();
    }

    static long longOpt(String key, long dflt) {
        String v = OPTS.get(key);
        return v == null ? dflt : Long.parseLong(v);
    }

    static String requiredOpt(String key) throws Failure {
        String v = OPTS.get(key);
        if (v == null || v.isEmpty()) {
            throw new Failure("FAIL " + scenario + ": option " + key + "=... is required");
        }
        return v;
    }

    // ----- checks ------------------------------------------------------------------------------

    static void ok(String what) {
        System.out.println("OK " + what);
    }

    static Failure fail(String what, Object expected, Object got) {
        return new Failure("FAIL " + what + ": expected " + show(expected) + " got " + show(got));
    }

    static String show(Object o) {
        if (o instanceof String) {
            String s = (String) o;
            String shown = s.length() > 200
                    ? s.substring(0, 200) + "...(" + s.length() + " chars)"
                    : s;
            return "\"" + shown + "\"";
        }
        if (o instanceof byte[]) {
            return "bytes" + Arrays.toString((byte[]) o);
        }
        if (o == null) {
            return "null";
        }
        return o + " (" + o.getClass().getSimpleName() + ")";
    }

    static void check(String what, boolean condition, Object expected, Object got) throws Failure {
        if (!condition) {
            throw fail(what, expected, got);
        }
    }

    static void expectEq(String what, Object expected, Object got) throws Failure {
        boolean same = expected instanceof byte[] && got instanceof byte[]
                ? Arrays.equals((byte[]) expected, (byte[]) got)
                : Objects.equals(expected, got);
        check(what, same, expected, got);
        ok(what);
    }

    // ----- connections and messages ------------------------------------------------------------

    static ActiveMQConnectionFactory factory(String brokerUrl) {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory(brokerUrl);
        // ObjectMessage bodies are deserialized only from trusted packages (the ArrayList of
        // message-types); an application configures the same.
        f.setTrustedPackages(List.of("java.util", "java.lang"));
        f.setUseCompression(Boolean.parseBoolean(OPTS.getOrDefault("compression", "false")));
        return f;
    }

    /** A started connection to {@code url}. */
    static Connection connect() throws JMSException, Failure {
        return connect(url, null);
    }

    /**
     * A started connection. Unless the URL is a failover: one (which may legitimately wait for
     * a broker), creating and starting it must take at most {@code connect_limit_ms} (default
     * 8000, the first connection of a JVM also loading the client's classes on a busy machine;
     * 0: no limit): stock ActiveMQ needs a few milliseconds, and the client gives up waiting
     * for the broker's WireFormatInfo after 10 s.
     */
    static Connection connect(String brokerUrl, String clientId) throws JMSException, Failure {
        long t0 = System.nanoTime();
        Connection c = factory(brokerUrl).createConnection();
        OPEN.add(c);
        if (clientId != null) {
            c.setClientID(clientId);
        }
        c.start();
        long ms = (System.nanoTime() - t0) / 1_000_000;
        long limit = longOpt("connect_limit_ms", 8000);
        if (limit > 0 && !brokerUrl.startsWith("failover:") && ms > limit) {
            throw fail("connection created and started within " + limit
                    + " ms (stock ActiveMQ: a few ms)", "<= " + limit + " ms", ms + " ms");
        }
        return c;
    }

    static void close(Connection c) throws JMSException {
        OPEN.remove(c);
        c.close();
    }

    static void closeAll() throws JMSException {
        List<Connection> open;
        synchronized (OPEN) {
            open = new ArrayList<>(OPEN);
        }
        for (Connection c : open) {
            close(c);
        }
    }

    static String name(String what) {
        return prefix + "." + what;
    }

    /** {@code brokerUrl} with one more URI query option. */
    /** A consumer of {@code d} on a new non-transacted session of {@code c} with {@code ackMode}. */
    static MessageConsumer consumer(Connection c, int ackMode, Destination d) throws JMSException {
        return c.createSession(false, ackMode).createConsumer(d);
    }

    /**
     * A consumer of queue {@code q} with ActiveMQ destination options
     * ({@code consumer.priority=10&consumer.prefetchSize=3}) on a new auto-acknowledge session
     * of {@code c}.
     */
    static MessageConsumer consumerWithOptions(Connection c, Queue q, String options)
            throws JMSException {
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        return s.createConsumer(s.createQueue(q.getQueueName() + "?" + options));
    }

    static String withOption(String brokerUrl, String option) {
        return brokerUrl + (brokerUrl.contains("?") ? "&" : "?") + option;
    }

    static Message receive(MessageConsumer consumer, String what) throws JMSException, Failure {
        Message m = consumer.receive(receiveTimeoutMs);
        if (m == null) {
            throw new Failure("FAIL " + what + ": expected a message within " + receiveTimeoutMs
                    + " ms, got none");
        }
        return m;
    }

    static String text(Message m, String what) throws JMSException, Failure {
        if (!(m instanceof TextMessage)) {
            throw fail(what, "a TextMessage", m.getClass().getName() + " " + m);
        }
        return ((TextMessage) m).getText();
    }

    /** Receives {@code n} text messages and checks their bodies, in order. */
    static List<Message> receiveTexts(MessageConsumer consumer, List<String> expected, String what)
            throws JMSException, Failure {
        List<Message> got = new ArrayList<>();
        List<String> bodies = new ArrayList<>();
        for (String body : expected) {
            Message m = consumer.receive(receiveTimeoutMs);
            if (m == null) {
                throw new Failure("FAIL " + what + ": expected " + expected + " got " + bodies
                        + " and then nothing within " + receiveTimeoutMs + " ms");
            }
            got.add(m);
            bodies.add(text(m, what));
            if (!body.equals(bodies.get(bodies.size() - 1))) {
                throw fail(what, expected, bodies);
            }
        }
        ok(what + " (" + expected.size() + " messages in order)");
        return got;
    }

    static List<String> bodies(String stem, int from, int to) {
        List<String> out = new ArrayList<>();
        for (int i = from; i < to; i++) {
            out.add(stem + "-" + i);
        }
        return out;
    }

    /** Sends persistent text messages on a fresh session of {@code c}. */
    static void sendTexts(Connection c, Destination d, List<String> bodies) throws JMSException {
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(d);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (String body : bodies) {
            p.send(s.createTextMessage(body));
        }
        s.close();
    }

    /**
     * Sends a persistent sentinel to {@code d} from {@code c} and checks that it is the next
     * message {@code consumer} receives: nothing else was left for it.
     */
    static void expectOnlySentinel(Connection c, Destination d, MessageConsumer consumer,
            String what) throws JMSException, Failure {
        String sentinel = "sentinel-" + UUID.randomUUID();
        sendTexts(c, d, List.of(sentinel));
        Message m = receive(consumer, what);
        String body = text(m, what);
        if (!sentinel.equals(body)) {
            throw fail(what, "nothing before the sentinel", "\"" + body + "\" (redelivered="
                    + m.getJMSRedelivered() + ")");
        }
        ok(what);
    }

    static void expectRedelivered(Message m, boolean redelivered, String what)
            throws JMSException, Failure {
        check(what + ": JMSRedelivered", m.getJMSRedelivered() == redelivered, redelivered,
                m.getJMSRedelivered());
    }

    // ----- scenarios ---------------------------------------------------------------------------

    /** Persistent text messages on a queue: N sent, N received in order with their bodies. */
    static void queueText() throws Exception {
        int n = (int) longOpt("count", 100);
        Connection c = connect();
        Queue q = queue(c, "texts");
        List<String> sent = bodies("text", 0, n);
        sendTexts(c, q, sent);
        ok("sent " + n + " persistent text messages to " + q.getQueueName());
        MessageConsumer consumer = consumer(c, Session.AUTO_ACKNOWLEDGE, q);
        List<Message> got = receiveTexts(consumer, sent, "receive the texts");
        for (Message m : got) {
            check("delivery mode of " + text(m, "body"),
                    m.getJMSDeliveryMode() == DeliveryMode.PERSISTENT, "PERSISTENT",
                    m.getJMSDeliveryMode());
            expectRedelivered(m, false, "first delivery of " + text(m, "body"));
            check("JMSDestination of " + text(m, "body"), q.equals(m.getJMSDestination()), q,
                    m.getJMSDestination());
            check("JMSMessageID of " + text(m, "body"), m.getJMSMessageID() != null
                    && m.getJMSMessageID().startsWith("ID:"), "ID:...", m.getJMSMessageID());
        }
        ok("persistent, not redelivered, JMSDestination and JMSMessageID set");
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        close(c);
    }

    /**
     * A new connection, with a session in {@code ackMode}, finds nothing on {@code q} but a
     * sentinel sent now.
     */
    static void expectNothingLeft(Connection producer, Queue q, int ackMode, String what)
            throws Exception {
        Connection again = connect();
        Session s = again.createSession(false, ackMode);
        expectOnlySentinel(producer, q, s.createConsumer(q), what);
        close(again);
    }

    static Queue queue(Connection c, String what) throws JMSException {
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue(name(what));
        s.close();
        return q;
    }

    static Topic topic(Connection c, String what) throws JMSException {
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic t = s.createTopic(name(what));
        s.close();
        return t;
    }

    /** The typed properties every message of message-types carries. */
    static final Map<String, Object> PROPERTIES = new LinkedHashMap<>();

    static {
        PROPERTIES.put("pBoolean", Boolean.TRUE);
        PROPERTIES.put("pByte", (byte) -7);
        PROPERTIES.put("pShort", (short) 31000);
        PROPERTIES.put("pInt", -123456789);
        PROPERTIES.put("pLong", 1234567890123456789L);
        PROPERTIES.put("pFloat", 1.5f);
        PROPERTIES.put("pDouble", 3.25e-7);
        // Non-ASCII from the BMP only: with stock ActiveMQ a NUL or a supplementary character in
        // a property string does not survive the round trip (the body's text does).
        PROPERTIES.put("pString", "h\u00e9llo \u2603 end");
        PROPERTIES.put("pEmpty", "");
        // Set to null: it exists (propertyExists, getPropertyNames) and reads as null.
        PROPERTIES.put("pNull", null);
        // ActiveMQ's extensions to JMS property types: a Character, a Map and a List.
        PROPERTIES.put("pChar", 'x');
        PROPERTIES.put("pMap", new HashMap<>(Map.of("a", 1, "b", "two")));
        PROPERTIES.put("pList", new ArrayList<>(List.of(1, "x")));
    }

    static final String TEXT_BODY = "text \u00e9\u2603\ud83d\ude00 nul:\u0000 end";
    static final byte[] BYTES_BODY = new byte[300];

    static {
        for (int i = 0; i < BYTES_BODY.length; i++) {
            BYTES_BODY[i] = (byte) i;
        }
    }

    /** Every message type, with typed properties and headers, preserved on receipt. */
    static void messageTypes() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "types");
        Queue replyTo = queue(c, "types-reply");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        long ttl = 3_600_000L;

        List<Message> sent = new ArrayList<>();
        TextMessage text = s.createTextMessage(TEXT_BODY);
        sent.add(text);

        BytesMessage bytes = s.createBytesMessage();
        bytes.writeBytes(BYTES_BODY);
        bytes.writeInt(0x01020304);
        bytes.writeUTF("utf \u2603");
        sent.add(bytes);

        MapMessage map = s.createMapMessage();
        map.setBoolean("b", true);
        map.setInt("i", 42);
        map.setLong("l", -5L);
        map.setDouble("d", 2.5);
        map.setString("s", "map \u2603");
        map.setBytes("y", new byte[] {1, 2, 3});
        sent.add(map);

        ArrayList<String> list = new ArrayList<>(List.of("one", "two \u2603", "three"));
        ObjectMessage object = s.createObjectMessage(list);
        sent.add(object);

        StreamMessage stream = s.createStreamMessage();
        stream.writeInt(7);
        stream.writeString("stream \u2603");
        stream.writeBoolean(false);
        stream.writeBytes(new byte[] {9, 8, 7});
        stream.writeDouble(-1.25);
        sent.add(stream);

        Message plain = s.createMessage();
        sent.add(plain);

        TextMessage large = s.createTextMessage(largeText());
        sent.add(large);

        // Null text is not "": each comes back as it was sent.
        sent.add(s.createTextMessage());
        sent.add(s.createTextMessage(""));

        int i = 0;
        for (Message m : sent) {
            for (Map.Entry<String, Object> e : PROPERTIES.entrySet()) {
                m.setObjectProperty(e.getKey(), e.getValue());
            }
            m.setIntProperty("index", i);
            m.setJMSCorrelationID("corr-" + i);
            m.setJMSReplyTo(replyTo);
            m.setJMSType("type-" + i);
            int mode = i % 2 == 0 ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT;
            p.send(m, mode, 1 + i, ttl);
            i++;
        }
        ok("sent " + sent.size() + " messages of every type");

        MessageConsumer consumer = s.createConsumer(q);
        // JMS orders messages of one producer only within a priority and delivery mode, and
        // ActiveMQ does reorder these: match them by their index property.
        Map<Integer, Message> byIndex = new TreeMap<>();
        for (i = 0; i < sent.size(); i++) {
            Message got = receive(consumer, "receive message " + (i + 1) + " of " + sent.size()
                    + " (got indexes " + byIndex.keySet() + " so far)");
            Object index = got.getObjectProperty("index");
            check("index property of a received " + kind(got), index instanceof Integer
                    && (Integer) index >= 0 && (Integer) index < sent.size()
                    && !byIndex.containsKey(index), "a new index in 0.." + (sent.size() - 1)
                    + " (have " + byIndex.keySet() + ")", index);
            byIndex.put((Integer) index, got);
        }
        ok("received " + sent.size() + " messages, one of each index");
        for (i = 0; i < sent.size(); i++) {
            Message want = sent.get(i);
            String kind = kind(want) + " #" + i;
            Message got = byIndex.get(i);
            check(kind + ": type", kind(got).equals(kind(want)), kind(want), kind(got));
            expectEq(kind + ": JMSMessageID", want.getJMSMessageID(), got.getJMSMessageID());
            expectEq(kind + ": JMSCorrelationID", "corr-" + i, got.getJMSCorrelationID());
            expectEq(kind + ": JMSReplyTo", replyTo, got.getJMSReplyTo());
            expectEq(kind + ": JMSType", "type-" + i, got.getJMSType());
            expectEq(kind + ": JMSPriority", 1 + i, got.getJMSPriority());
            expectEq(kind + ": JMSDeliveryMode",
                    i % 2 == 0 ? DeliveryMode.PERSISTENT : DeliveryMode.NON_PERSISTENT,
                    got.getJMSDeliveryMode());
            check(kind + ": JMSExpiration set from the TTL", want.getJMSExpiration() > 0,
                    "> 0 on the sent message", want.getJMSExpiration());
            expectEq(kind + ": JMSExpiration", want.getJMSExpiration(), got.getJMSExpiration());
            expectEq(kind + ": JMSTimestamp", want.getJMSTimestamp(), got.getJMSTimestamp());
            expectEq(kind + ": JMSDestination", q, got.getJMSDestination());
            expectRedelivered(got, false, kind);
            for (Map.Entry<String, Object> e : PROPERTIES.entrySet()) {
                expectEq(kind + ": property " + e.getKey(), e.getValue(),
                        got.getObjectProperty(e.getKey()));
            }
            expectEq(kind + ": property index", i, got.getObjectProperty("index"));
            expectEq(kind + ": typed read of pInt as long", -123456789L,
                    got.getLongProperty("pInt"));
            List<String> names = new ArrayList<>();
            for (Enumeration<?> e = got.getPropertyNames(); e.hasMoreElements();) {
                names.add((String) e.nextElement());
            }
            check(kind + ": property names", names.containsAll(PROPERTIES.keySet()),
                    PROPERTIES.keySet(), names);
            check(kind + ": a property set to null exists", got.propertyExists("pNull"),
                    true, false);
            checkBody(kind, want, got, list);
        }
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        close(c);
    }

    static String largeText() {
        StringBuilder b = new StringBuilder();
        for (int i = 0; b.length() < 200_000; i++) {
            b.append("line ").append(i).append(" \u2603\n");
        }
        return b.toString();
    }

    static String kind(Message m) {
        if (m instanceof TextMessage) {
            return "TextMessage";
        } else if (m instanceof BytesMessage) {
            return "BytesMessage";
        } else if (m instanceof MapMessage) {
            return "MapMessage";
        } else if (m instanceof ObjectMessage) {
            return "ObjectMessage";
        } else if (m instanceof StreamMessage) {
            return "StreamMessage";
        }
        return "Message";
    }

    static void checkBody(String kind, Message want, Message got, ArrayList<String> list)
            throws Exception {
        if (got instanceof TextMessage) {
            expectEq(kind + ": text", ((TextMessage) want).getText(),
                    ((TextMessage) got).getText());
        } else if (got instanceof BytesMessage) {
            BytesMessage b = (BytesMessage) got;
            int expectedLength = BYTES_BODY.length + 4 + 2
                    + "utf \u2603".getBytes(StandardCharsets.UTF_8).length;
            expectEq(kind + ": body length", (long) expectedLength, b.getBodyLength());
            byte[] head = new byte[BYTES_BODY.length];
            expectEq(kind + ": readBytes count", BYTES_BODY.length, b.readBytes(head));
            expectEq(kind + ": bytes", BYTES_BODY, head);
            expectEq(kind + ": readInt", 0x01020304, b.readInt());
            expectEq(kind + ": readUTF", "utf \u2603", b.readUTF());
        } else if (got instanceof MapMessage) {
            MapMessage m = (MapMessage) got;
            expectEq(kind + ": b", true, m.getBoolean("b"));
            expectEq(kind + ": i", 42, m.getInt("i"));
            expectEq(kind + ": l", -5L, m.getLong("l"));
            expectEq(kind + ": d", 2.5, m.getDouble("d"));
            expectEq(kind + ": s", "map \u2603", m.getString("s"));
            expectEq(kind + ": y", new byte[] {1, 2, 3}, m.getBytes("y"));
        } else if (got instanceof ObjectMessage) {
            Serializable o = ((ObjectMessage) got).getObject();
            expectEq(kind + ": object", list, o);
        } else if (got instanceof StreamMessage) {
            StreamMessage m = (StreamMessage) got;
            expectEq(kind + ": readInt", 7, m.readInt());
            expectEq(kind + ": readString", "stream \u2603", m.readString());
            expectEq(kind + ": readBoolean", false, m.readBoolean());
            byte[] b = new byte[3];
            expectEq(kind + ": readBytes count", 3, m.readBytes(b));
            expectEq(kind + ": readBytes", new byte[] {9, 8, 7}, b);
            // The end of a byte-array field: -1.
            expectEq(kind + ": end of the byte array", -1, m.readBytes(b));
            expectEq(kind + ": readDouble", -1.25, m.readDouble());
        }
    }

    /**
     * AUTO_ACKNOWLEDGE: messages received with receive() and with a MessageListener are
     * acknowledged; after a reconnect nothing comes back.
     */
    /**
     * STOMP and JMS read each other's messages (run by a test that speaks STOMP): from queue
     * {@code from} it receives what a STOMP client sent, a text frame without content-length
     * (a TextMessage, "hello from stomp", header color=red) then one with content-length (a
     * BytesMessage, bytes 0 1 2 255); then it sends to queue {@code to} a TextMessage "hello
     * from jms" with JMSCorrelationID corr-1, JMSType greeting, int property count=7, string
     * property color=blue and property unset=null, for the STOMP client to read.
     */
    static void stompInterop() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = s.createConsumer(s.createQueue(requiredOpt("from")));
        Message first = receive(consumer, "the STOMP text frame");
        expectEq("a STOMP frame without content-length is a TextMessage", "hello from stomp",
                text(first, "STOMP text frame"));
        expectEq("a STOMP header is a string property", "red", first.getStringProperty("color"));
        Message second = receive(consumer, "the STOMP frame with content-length");
        check("a STOMP frame with content-length is a BytesMessage",
                second instanceof BytesMessage, "a BytesMessage", second.getClass().getName());
        BytesMessage bytes = (BytesMessage) second;
        byte[] body = new byte[(int) bytes.getBodyLength()];
        bytes.readBytes(body);
        expectEq("the bytes body", new byte[] {0, 1, 2, (byte) 255}, body);
        MessageProducer producer = s.createProducer(s.createQueue(requiredOpt("to")));
        TextMessage reply = s.createTextMessage("hello from jms");
        reply.setJMSCorrelationID("corr-1");
        reply.setJMSType("greeting");
        reply.setIntProperty("count", 7);
        reply.setStringProperty("color", "blue");
        reply.setObjectProperty("unset", null);
        producer.send(reply);
        ok("sent a TextMessage for the STOMP client");
        close(c);
    }

    static void ackAuto() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "auto");
        List<String> sent = bodies("auto", 0, 10);
        sendTexts(producer, q, sent);
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = s.createConsumer(q);
        for (Message m : receiveTexts(consumer, sent.subList(0, 5), "receive() auto-ack")) {
            expectRedelivered(m, false, "auto-ack receive()");
        }
        consumer.close();
        // The other half through a listener (asynchronous dispatch).
        MessageConsumer listening = s.createConsumer(q);
        List<String> heard = Collections.synchronizedList(new ArrayList<>());
        List<String> redelivered = Collections.synchronizedList(new ArrayList<>());
        AtomicReference<String> problem = new AtomicReference<>();
        CountDownLatch done = new CountDownLatch(5);
        listening.setMessageListener(m -> {
            try {
                heard.add(((TextMessage) m).getText());
                if (m.getJMSRedelivered()) {
                    redelivered.add(((TextMessage) m).getText());
                }
            } catch (Exception e) {
                problem.compareAndSet(null, e.toString());
            }
            done.countDown();
        });
        boolean all = done.await(receiveTimeoutMs, TimeUnit.MILLISECONDS);
        check("listener auto-ack: 5 messages within " + receiveTimeoutMs + " ms", all,
                sent.subList(5, 10), heard);
        expectEq("listener auto-ack: bodies in order", sent.subList(5, 10), new ArrayList<>(heard));
        expectEq("listener auto-ack: no listener error", null, problem.get());
        // The first consumer had them prefetched but never handed them to the application:
        // closing it told the broker the last one it delivered, so they are not redelivered.
        expectEq("messages prefetched by the closed consumer but never delivered to it are not "
                + "flagged JMSRedelivered", List.of(), new ArrayList<>(redelivered));
        close(c);
        expectNothingLeft(producer, q, Session.AUTO_ACKNOWLEDGE,
                "auto-acknowledged messages are gone after a reconnect");
        close(producer);
    }

    /**
     * CLIENT_ACKNOWLEDGE: messages received but not acknowledged come back, flagged as
     * redelivered, once the connection closes; acknowledged ones never do.
     */
    static void ackClient() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "client");
        List<String> sent = bodies("client", 0, 5);
        sendTexts(producer, q, sent);

        Connection first = connect();
        MessageConsumer c1 = consumer(first, Session.CLIENT_ACKNOWLEDGE, q);
        for (Message m : receiveTexts(c1, sent, "first delivery (not acknowledged)")) {
            expectRedelivered(m, false, "first delivery");
        }
        close(first);
        ok("closed the connection without acknowledging");

        Connection second = connect();
        MessageConsumer c2 = consumer(second, Session.CLIENT_ACKNOWLEDGE, q);
        List<Message> again = receiveTexts(c2, sent, "redelivery after the close");
        for (Message m : again) {
            expectRedelivered(m, true, "redelivery of " + text(m, "body"));
            check("JMSXDeliveryCount of " + text(m, "body"),
                    m.getIntProperty("JMSXDeliveryCount") >= 2, ">= 2",
                    m.getIntProperty("JMSXDeliveryCount"));
        }
        ok("every unacknowledged message redelivered with JMSRedelivered=true");
        // Acknowledging the last acknowledges every message of the session.
        again.get(again.size() - 1).acknowledge();
        ok("acknowledged");
        close(second);

        Connection third = connect();
        MessageConsumer c3 = consumer(third, Session.CLIENT_ACKNOWLEDGE, q);
        String sentinel = "sentinel-" + UUID.randomUUID();
        sendTexts(producer, q, List.of(sentinel));
        Message m = receive(c3, "after the acknowledgement");
        check("acknowledged messages are gone: next is the sentinel",
                sentinel.equals(text(m, "body")), sentinel,
                text(m, "body") + " (redelivered=" + m.getJMSRedelivered() + ")");
        m.acknowledge();
        ok("acknowledged messages are gone: next is the sentinel");
        close(third);
        close(producer);
    }

    /**
     * CLIENT_ACKNOWLEDGE with a client that hands its prefetched messages to the application by
     * priority (messagePrioritySupported): the application gets the two priority-9 messages
     * first, and acknowledging them sends one ack whose range holds the 9 messages between
     * them that the application never got. As ActiveMQ does, the broker refuses that ack
     * (telling the exception listener) rather than acknowledge the unseen ones: once the
     * connection closes, all 20 messages are there again.
     */
    static void ackClientOutOfOrder() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "client-out-of-order");
        Session ps = producer.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(q);
        for (int i = 0; i < 20; i++) {
            p.send(ps.createTextMessage("m-" + i), DeliveryMode.PERSISTENT, i % 10 == 9 ? 9 : 4,
                    0);
        }
        ok("sent m-0..m-19, m-9 and m-19 at priority 9");

        ActiveMQConnectionFactory f = factory(url);
        f.setMessagePrioritySupported(true);
        Connection c = f.createConnection();
        OPEN.add(c);
        AtomicReference<JMSException> heard = new AtomicReference<>();
        c.setExceptionListener(heard::set);
        c.start();
        Session s = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        ActiveMQMessageConsumer consumer = (ActiveMQMessageConsumer) s.createConsumer(q);
        long deadline = System.currentTimeMillis() + receiveTimeoutMs;
        while (consumer.getMessageSize() < 20 && System.currentTimeMillis() < deadline) {
            Thread.sleep(10);
        }
        expectEq("messages prefetched", 20, consumer.getMessageSize());
        expectEq("first message handed over", "m-9", text(receive(consumer, "first"), "first"));
        Message second = receive(consumer, "second");
        expectEq("second message handed over", "m-19", text(second, "second"));
        second.acknowledge();
        while (heard.get() == null && System.currentTimeMillis() < deadline + receiveTimeoutMs) {
            Thread.sleep(10);
        }
        check("the exception listener hears of the refused ack", heard.get() != null,
                "an Unmatched acknowledge exception", heard.get());
        ok("the ack was refused: " + heard.get().getMessage());
        close(c);

        Connection again = connect();
        MessageConsumer drain = consumer(again, Session.AUTO_ACKNOWLEDGE, q);
        Set<String> left = new TreeSet<>();
        for (Message m; left.size() < 20 && (m = drain.receive(receiveTimeoutMs)) != null; ) {
            left.add(text(m, "left"));
        }
        expectEq("messages left after the refused ack", 20, left.size());
        close(again);
        close(producer);
    }

    /** DUPS_OK_ACKNOWLEDGE: everything arrives once; closing the consumer settles the acks. */
    static void ackDupsOk() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "dupsok");
        List<String> sent = bodies("dupsok", 0, 20);
        sendTexts(producer, q, sent);
        Connection c = connect();
        MessageConsumer consumer = consumer(c, Session.DUPS_OK_ACKNOWLEDGE, q);
        for (Message m : receiveTexts(consumer, sent, "dups-ok receive")) {
            expectRedelivered(m, false, "dups-ok first delivery");
        }
        close(c);
        expectNothingLeft(producer, q, Session.DUPS_OK_ACKNOWLEDGE,
                "dups-ok messages acknowledged on close: nothing comes back");
        close(producer);
    }

    /**
     * INDIVIDUAL_ACKNOWLEDGE: acknowledging a message acknowledges that one only; after a
     * reconnect exactly the others come back, redelivered.
     */
    static void ackIndividual() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "individual");
        List<String> sent = bodies("individual", 0, 6);
        sendTexts(producer, q, sent);
        Connection first = connect();
        Session s1 = first.createSession(false, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE);
        List<Message> got = receiveTexts(s1.createConsumer(q), sent, "first delivery");
        List<String> unacked = new ArrayList<>();
        for (int i = 0; i < got.size(); i++) {
            if (i % 2 == 0) {
                got.get(i).acknowledge();
            } else {
                unacked.add(sent.get(i));
            }
        }
        ok("acknowledged messages 0, 2, 4 individually");
        close(first);

        Connection second = connect();
        MessageConsumer c2 = consumer(second, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE, q);
        for (Message m : receiveTexts(c2, unacked, "only the unacknowledged come back")) {
            expectRedelivered(m, true, "redelivery of " + text(m, "body"));
            m.acknowledge();
        }
        String sentinel = "sentinel-" + UUID.randomUUID();
        sendTexts(producer, q, List.of(sentinel));
        Message m = receive(c2, "after the redelivered ones");
        check("nothing else comes back", sentinel.equals(text(m, "body")), sentinel,
                text(m, "body") + " (redelivered=" + m.getJMSRedelivered() + ")");
        m.acknowledge();
        ok("nothing else comes back");
        close(second);

        Connection third = connect();
        MessageConsumer c3 = consumer(third, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE, q);
        String last = "sentinel-" + UUID.randomUUID();
        sendTexts(producer, q, List.of(last));
        Message n = receive(c3, "after the individual acks");
        check("every individually acknowledged message is gone", last.equals(text(n, "body")),
                last, text(n, "body") + " (redelivered=" + n.getJMSRedelivered() + ")");
        n.acknowledge();
        ok("every individually acknowledged message is gone");
        close(third);
        close(producer);
    }

    /**
     * A transacted producer: nothing is visible before commit; committed messages are
     * delivered; rolled back ones never are.
     */
    static void txProducer() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "txsend");
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageProducer p = tx.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        List<String> committed = bodies("committed", 0, 5);
        for (String body : committed) {
            p.send(tx.createTextMessage(body));
        }
        ok("sent 5 in a transaction, not committed yet");

        Connection reader = connect();
        MessageConsumer consumer = consumer(reader, Session.AUTO_ACKNOWLEDGE, q);
        expectOnlySentinel(c, q, consumer, "uncommitted messages are invisible");

        tx.commit();
        ok("committed");
        receiveTexts(consumer, committed, "committed messages delivered");

        for (String body : bodies("rolledback", 0, 5)) {
            p.send(tx.createTextMessage(body));
        }
        tx.rollback();
        ok("sent 5 more and rolled back");
        expectOnlySentinel(c, q, consumer, "rolled back messages are never delivered");

        // The session goes on after a rollback: a new transaction commits.
        p.send(tx.createTextMessage("after-rollback"));
        tx.commit();
        receiveTexts(consumer, List.of("after-rollback"), "a commit after the rollback");
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        close(reader);
        close(c);
    }

    /**
     * A transacted consumer: rollback redelivers (JMSRedelivered), also after the connection
     * closed with the transaction open; commit removes the messages for good.
     */
    static void txConsumer() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "txreceive");
        List<String> sent = bodies("txreceive", 0, 5);
        sendTexts(producer, q, sent);

        Connection c = connect();
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageConsumer consumer = tx.createConsumer(q);
        for (Message m : receiveTexts(consumer, sent, "received in a transaction")) {
            expectRedelivered(m, false, "first delivery in the transaction");
        }
        tx.rollback();
        ok("rolled back");
        for (Message m : receiveTexts(consumer, sent, "redelivered after the rollback")) {
            expectRedelivered(m, true, "after rollback, " + text(m, "body"));
        }
        ok("JMSRedelivered=true after rollback");
        close(c);
        ok("closed the connection with the transaction open");

        Connection c2 = connect();
        Session tx2 = c2.createSession(true, Session.SESSION_TRANSACTED);
        MessageConsumer consumer2 = tx2.createConsumer(q);
        for (Message m : receiveTexts(consumer2, sent, "redelivered to a new connection")) {
            expectRedelivered(m, true, "on a new connection, " + text(m, "body"));
        }
        tx2.commit();
        ok("committed");
        String sentinel = "sentinel-" + UUID.randomUUID();
        sendTexts(producer, q, List.of(sentinel));
        Message m = receive(consumer2, "after the commit");
        check("committed messages are gone", sentinel.equals(text(m, "body")), sentinel,
                text(m, "body") + " (redelivered=" + m.getJMSRedelivered() + ")");
        tx2.commit();
        ok("committed messages are gone");
        close(c2);

        expectNothingLeft(producer, q, Session.AUTO_ACKNOWLEDGE,
                "committed messages stay gone after a reconnect");
        close(producer);
    }

    /** Client options under which a message rolled back three times is poison-acked. */
    static final String TWO_REDELIVERIES =
            "jms.redeliveryPolicy.maximumRedeliveries=2&jms.redeliveryPolicy.initialRedeliveryDelay=0";

    /** Client options under which a message rolled back twice is poison-acked. */
    static final String ONE_REDELIVERY =
            "jms.redeliveryPolicy.maximumRedeliveries=1&jms.redeliveryPolicy.initialRedeliveryDelay=0";

    /**
     * Receives {@code body} from {@code consumer} (of transacted session {@code tx}, on a
     * connection with {@link #ONE_REDELIVERY}) and rolls it back twice: the client then
     * poison-acks it and the broker dead-letters it.
     */
    static void rollBackTwice(Session tx, MessageConsumer consumer, String body, String where)
            throws Exception {
        expectEq("first delivery from " + where, body,
                text(receive(consumer, "first delivery from " + where), "body"));
        tx.rollback();
        Message again = receive(consumer, "redelivery from " + where);
        expectEq("redelivered once from " + where, body, text(again, "body"));
        expectRedelivered(again, true, "the redelivery from " + where);
        tx.rollback();
        ok("rolled back past maximumRedeliveries on " + where);
    }

    /** Poisons {@code body}, the next message on queue {@code q}, from a connection of its own. */
    static void poisonFromQueue(Queue q, String body) throws Exception {
        Connection c = connect(withOption(url, ONE_REDELIVERY), null);
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        rollBackTwice(tx, tx.createConsumer(q), body, q.getQueueName());
        close(c);
    }

    /**
     * Poison acks: with the client's redelivery policy at two redeliveries, a message rolled
     * back three times is poison-acked by the client and the broker moves it to ActiveMQ.DLQ,
     * whence it is delivered afresh (not redelivered); it is no longer on its queue.
     */
    static void poisonDlq() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "poison");
        String body = "poison-" + UUID.randomUUID();
        Session ps = producer.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TextMessage poison = ps.createTextMessage(body);
        poison.setStringProperty("run", prefix);
        ps.createProducer(q).send(poison);
        // Two redeliveries allowed and three rollbacks: the client reports the redeliveries
        // to the broker (redelivered acks) before it poison-acks the message.
        Connection c = connect(withOption(url, TWO_REDELIVERIES), null);
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageConsumer consumer = tx.createConsumer(q);
        for (int i = 1; i <= 3; i++) {
            expectEq("delivery " + i, body, text(receive(consumer, "delivery " + i), "body"));
            tx.rollback();
        }
        close(c);

        Connection d = connect();
        Session ds = d.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer dlq = ds.createConsumer(ds.createQueue("ActiveMQ.DLQ"),
                "run = '" + prefix + "'");
        Message dead = receive(dlq, "the message on ActiveMQ.DLQ");
        expectEq("the poisoned message is on ActiveMQ.DLQ", body, text(dead, "body"));
        // Why it is there, in the client's words, and its expiration (none), as ActiveMQ says.
        String cause = dead.getStringProperty("dlqDeliveryFailureCause");
        check("dlqDeliveryFailureCause names the redelivery limit",
                cause != null && cause.contains("exceeds redelivery policy limit"),
                "...exceeds redelivery policy limit...", cause);
        expectEq("originalExpiration", 0L, dead.getObjectProperty("originalExpiration"));
        // Delivered afresh from the DLQ: a DLQ consumer's redelivery policy starts anew.
        expectEq("JMSRedelivered on the DLQ", false, dead.getJMSRedelivered());
        expectEq("JMSXDeliveryCount on the DLQ", 1, dead.getIntProperty("JMSXDeliveryCount"));
        expectOnlySentinel(producer, q, ds.createConsumer(q), "the poisoned message left its queue");
        close(d);
        close(producer);
    }

    /**
     * Against a broker whose dead-letter strategy is individual on every destination (ActiveMQ's
     * {@code <individualDeadLetterStrategy/>} with its default prefixes, ferromq's
     * {@code dead_letter_strategy = "individual"}): a queue's poisoned message goes to
     * ActiveMQ.DLQ.Queue.QUEUE, a durable subscription's to ActiveMQ.DLQ.Topic.TOPIC (a queue),
     * and each leaves where it was. Poisoned again on its DLQ, a message is discarded (ActiveMQ
     * 5.17's dead-letter audit has seen it), not moved to a DLQ of the DLQ.
     */
    static void individualDlq() throws Exception {
        Connection producer = connect();
        Queue q = queue(producer, "orders");
        String body = "poison-" + UUID.randomUUID();
        sendTexts(producer, q, List.of(body));
        poisonFromQueue(q, body);
        Connection d = connect();
        Session ds = d.createSession(false, Session.AUTO_ACKNOWLEDGE);
        expectOnlySentinel(producer, q, ds.createConsumer(q), "the poisoned message left its queue");
        Queue dlq = ds.createQueue("ActiveMQ.DLQ.Queue." + q.getQueueName());
        poisonFromQueue(dlq, body);
        expectOnlySentinel(producer, dlq, ds.createConsumer(dlq),
                "poisoned again on its DLQ, it left it");
        Queue dlqOfDlq = ds.createQueue("ActiveMQ.DLQ.Queue." + dlq.getQueueName());
        expectOnlySentinel(producer, dlqOfDlq, ds.createConsumer(dlqOfDlq),
                "and was discarded, not moved to " + dlqOfDlq.getQueueName());

        Topic t = topic(producer, "news");
        Connection sub = connect(withOption(url, ONE_REDELIVERY), prefix + ".reader");
        Session tx = sub.createSession(true, Session.SESSION_TRANSACTED);
        TopicSubscriber durable = tx.createDurableSubscriber(t, "news");
        String news = "bad-news-" + UUID.randomUUID();
        sendTexts(producer, t, List.of(news));
        rollBackTwice(tx, durable, news, "durable subscription on " + t.getTopicName());
        Queue topicDlq = ds.createQueue("ActiveMQ.DLQ.Topic." + t.getTopicName());
        expectEq("the poisoned topic message is on " + topicDlq.getQueueName(), news,
                text(receive(ds.createConsumer(topicDlq),
                        "the message on " + topicDlq.getQueueName()), "body"));
        expectOnlySentinel(producer, t, durable, "the poisoned message left the subscription");
        tx.commit();
        durable.close();
        tx.unsubscribe("news");
        close(sub);
        close(d);
        close(producer);
    }

    /** A topic: every subscriber gets every message published while it is subscribed. */
    static void topicPubSub() throws Exception {
        Connection c = connect();
        Topic t = topic(c, "news");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(t);
        p.send(s.createTextMessage("before-any-subscriber"));
        Connection other = connect();
        Session so = other.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer a = s.createConsumer(t);
        MessageConsumer b = so.createConsumer(t);
        List<String> sent = bodies("news", 0, 5);
        for (String body : sent) {
            p.send(s.createTextMessage(body));
        }
        receiveTexts(a, sent, "subscriber A gets every message (none from before it subscribed)");
        receiveTexts(b, sent, "subscriber B gets every message (none from before it subscribed)");
        close(other);
        close(c);
    }

    /**
     * Wildcard topics, as ActiveMQ reads them: a consumer on {@code <base>.>} gets what is
     * published to every topic under {@code <base>}, with the topic it was published to as
     * JMSDestination, and nothing from {@code <base>x.app1}; a durable subscriber on
     * {@code <base>.*} keeps, while offline, what one-segment topics under it get, not
     * {@code <base>.app2.error}.
     */
    static void wildcardTopic() throws Exception {
        String base = name("logs");
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic app1 = s.createTopic(base + ".app1");
        Topic app2Error = s.createTopic(base + ".app2.error");
        Topic elsewhere = s.createTopic(base + "x.app1");
        MessageConsumer all = s.createConsumer(s.createTopic(base + ".>"));
        MessageProducer p = s.createProducer(null);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        p.send(app1, s.createTextMessage("app1"));
        p.send(elsewhere, s.createTextMessage("elsewhere"));
        p.send(app2Error, s.createTextMessage("app2-error"));
        List<Message> got = receiveTexts(all, List.of("app1", "app2-error"),
                "a consumer on " + base + ".> gets both matching topics");
        check("JMSDestination of app1", app1.equals(got.get(0).getJMSDestination()), app1,
                got.get(0).getJMSDestination());
        check("JMSDestination of app2-error", app2Error.equals(got.get(1).getJMSDestination()),
                app2Error, got.get(1).getJMSDestination());
        ok("JMSDestination is the topic published to");
        expectOnlySentinel(c, app1, all, "nothing from " + base + "x.app1");

        String clientId = name("client");
        Connection c1 = connect(url, clientId);
        Session s1 = c1.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Topic oneLevel = s1.createTopic(base + ".*");
        s1.createDurableSubscriber(oneLevel, "wild").close();
        close(c1);
        ok("durable subscriber on " + base + ".* offline");
        p.send(app1, s.createTextMessage("offline-app1"));
        p.send(app2Error, s.createTextMessage("offline-app2-error"));
        Connection c2 = connect(url, clientId);
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d = s2.createDurableSubscriber(oneLevel, "wild");
        receiveTexts(d, List.of("offline-app1"), "kept while offline, for the matching topic only");
        expectOnlySentinel(c, app1, d, "nothing kept from " + base + ".app2.error");
        d.close();
        s2.unsubscribe("wild");
        ok("unsubscribed");
        close(c2);
        close(c);
    }

    /**
     * Composite destinations: a producer on queue {@code A,B,topic://T} sends each message to
     * queues A and B and topic T, each copy with its member as JMSDestination; in a transacted
     * session the copies go at commit and nowhere at rollback. A consumer on queue {@code A,B}
     * receives what is sent to either, each with its member as JMSDestination.
     */
    static void compositeDestinations() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue a = s.createQueue(name("a"));
        Queue b = s.createQueue(name("b"));
        Topic t = s.createTopic(name("t"));
        Queue composite = s.createQueue(a.getQueueName() + "," + b.getQueueName() + ",topic://"
                + t.getTopicName());
        MessageConsumer onT = consumer(c, Session.AUTO_ACKNOWLEDGE, t);
        MessageConsumer onA = consumer(c, Session.AUTO_ACKNOWLEDGE, a);
        MessageConsumer onB = consumer(c, Session.AUTO_ACKNOWLEDGE, b);
        List<String> sent = List.of("one", "two");
        sendTexts(c, composite, sent);
        ok("sent to " + composite.getQueueName());
        Map<MessageConsumer, Destination> members = new LinkedHashMap<>();
        members.put(onA, a);
        members.put(onB, b);
        members.put(onT, t);
        for (Map.Entry<MessageConsumer, Destination> e : members.entrySet()) {
            for (Message m : receiveTexts(e.getKey(), sent, "member " + e.getValue() + " gets them")) {
                check("JMSDestination on " + e.getValue(), e.getValue().equals(m.getJMSDestination()),
                        e.getValue(), m.getJMSDestination());
            }
        }
        ok("each copy addressed to its member");

        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageProducer p = tx.createProducer(composite);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        p.send(tx.createTextMessage("rolled-back"));
        tx.rollback();
        p.send(tx.createTextMessage("committed"));
        tx.commit();
        for (MessageConsumer m : members.keySet()) {
            receiveTexts(m, List.of("committed"), "member " + members.get(m) + " gets the commit");
        }
        expectOnlySentinel(c, a, onA, "nothing rolled back reached " + a);
        expectOnlySentinel(c, b, onB, "nothing rolled back reached " + b);
        onA.close();
        onB.close();

        Queue both = s.createQueue(a.getQueueName() + "," + b.getQueueName());
        MessageConsumer onBoth = consumer(c, Session.AUTO_ACKNOWLEDGE, both);
        sendTexts(c, a, List.of("to-a"));
        sendTexts(c, b, List.of("to-b"));
        Map<String, Destination> got = new TreeMap<>();
        for (int i = 0; i < 2; i++) {
            Message m = receive(onBoth, "a consumer on " + both.getQueueName());
            got.put(text(m, "from a member"), m.getJMSDestination());
        }
        Map<String, Destination> want = new TreeMap<>();
        want.put("to-a", a);
        want.put("to-b", b);
        expectEq("a consumer on " + both.getQueueName() + " gets each member's message", want, got);
        expectOnlySentinel(c, a, onBoth, "nothing more for the consumer on " + both.getQueueName());
        close(c);
    }

    /**
     * ActiveMQ's virtual topics (on by default: topics {@code VirtualTopic.>}, consumer queues
     * {@code Consumer.*.VirtualTopic.>}): a message sent to topic {@code VirtualTopic.T} is
     * copied to each consumer queue {@code Consumer.<system>.VirtualTopic.T} that exists when it
     * is sent (made by its first consumer), with that queue as JMSDestination and the topic as
     * its original destination; system A's two consumers share its copies, system B gets all of
     * them, a plain subscriber of the topic gets them too. A message sent before any consumer
     * queue exists reaches none, and a consumer queue keeps receiving while its consumers are
     * away.
     */
    static void virtualTopic() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        String topicName = "VirtualTopic." + name("orders");
        Topic t = s.createTopic(topicName);
        Queue qa = s.createQueue("Consumer.A." + topicName);
        Queue qb = s.createQueue("Consumer.B." + topicName);
        sendTexts(c, t, List.of("early"));
        ok("sent to " + topicName + " before any consumer queue exists");
        Connection a1Conn = connect();
        MessageConsumer a1 = consumer(a1Conn, Session.AUTO_ACKNOWLEDGE, qa);
        Connection a2Conn = connect();
        MessageConsumer a2 = consumer(a2Conn, Session.AUTO_ACKNOWLEDGE, qa);
        Connection bConn = connect();
        MessageConsumer b = consumer(bConn, Session.AUTO_ACKNOWLEDGE, qb);
        MessageConsumer plain = consumer(c, Session.AUTO_ACKNOWLEDGE, t);
        ok("two consumers on " + qa.getQueueName() + ", one on " + qb.getQueueName()
                + ", one on the topic");
        List<String> sent = bodies("order", 0, 4);
        sendTexts(c, t, sent);
        for (Message m : receiveTexts(b, sent, "system B gets every message")) {
            check("JMSDestination on system B's queue", qb.equals(m.getJMSDestination()), qb,
                    m.getJMSDestination());
            ActiveMQDestination original = ((ActiveMQMessage) m).getOriginalDestination();
            check("original destination on system B's queue", t.equals(original), t, original);
        }
        ok("addressed to the consumer queue, the topic as original destination");
        for (Message m : receiveTexts(plain, sent, "the topic's own subscriber gets them")) {
            check("JMSDestination on the topic", t.equals(m.getJMSDestination()), t,
                    m.getJMSDestination());
        }
        TreeSet<String> shared = new TreeSet<>();
        long end = System.currentTimeMillis() + receiveTimeoutMs;
        while (shared.size() < sent.size() && System.currentTimeMillis() < end) {
            for (MessageConsumer a : List.of(a1, a2)) {
                Message m = a.receive(50);
                if (m != null && !shared.add(text(m, "system A"))) {
                    throw fail("each message once on system A's queue", sent, text(m, "again"));
                }
            }
        }
        expectEq("system A's consumers share its copies", new TreeSet<>(sent), shared);
        close(a1Conn);
        close(a2Conn);
        close(bConn);
        sendTexts(c, t, List.of("while-away"));
        ok("sent while the consumer queues have no consumer");
        Connection again = connect();
        MessageConsumer a3 = consumer(again, Session.AUTO_ACKNOWLEDGE, qa);
        MessageConsumer b2 = consumer(again, Session.AUTO_ACKNOWLEDGE, qb);
        receiveTexts(a3, List.of("while-away"), "system A's queue kept it, not \"early\"");
        receiveTexts(b2, List.of("while-away"), "system B's queue kept it, not \"early\"");
        receiveTexts(plain, List.of("while-away"), "the topic subscriber too");
        // One sentinel reaches all three: the next message each receives.
        String sentinel = "sentinel-" + UUID.randomUUID();
        sendTexts(c, t, List.of(sentinel));
        receiveTexts(a3, List.of(sentinel), "nothing more on system A's queue");
        receiveTexts(b2, List.of(sentinel), "nothing more on system B's queue");
        receiveTexts(plain, List.of(sentinel), "nothing more for the topic subscriber");
        close(again);
        close(c);
    }

    /**
     * Exclusive consumers ({@code queue://x?consumer.exclusive=true}): with a plain consumer
     * and two exclusive ones on a queue, the first exclusive consumer gets every message; when
     * its connection closes the second exclusive one gets what the first did not acknowledge,
     * redelivered and in order, and then what is sent next; the plain consumer got nothing
     * meanwhile (the sentinel, sent once it is alone, is the first message it receives).
     */
    static void exclusiveConsumer() throws Exception {
        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue(name("orders"));
        Queue exclusiveQ = s.createQueue(name("orders") + "?consumer.exclusive=true");
        Connection plainConn = connect();
        MessageConsumer plain = consumer(plainConn, Session.AUTO_ACKNOWLEDGE, q);
        Connection firstConn = connect();
        MessageConsumer first =
                consumer(firstConn, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE, exclusiveQ);
        Connection secondConn = connect();
        MessageConsumer second =
                consumer(secondConn, ActiveMQSession.INDIVIDUAL_ACKNOWLEDGE, exclusiveQ);
        ok("a plain consumer, then two exclusive consumers on " + q.getQueueName());
        List<String> sent = bodies("order", 0, 6);
        sendTexts(c, q, sent);
        List<Message> got = receiveTexts(first, sent, "the first exclusive consumer gets all");
        got.get(0).acknowledge();
        got.get(1).acknowledge();
        close(firstConn);
        ok("the first exclusive consumer acknowledged 2 and closed");
        List<Message> again = receiveTexts(second, sent.subList(2, 6),
                "the second exclusive consumer takes over the unacknowledged");
        for (Message m : again) {
            expectRedelivered(m, true, "taken over " + text(m, "body"));
            m.acknowledge();
        }
        ok("taken over as redelivered");
        sendTexts(c, q, List.of("order-6"));
        receiveTexts(second, List.of("order-6"), "the second exclusive consumer gets the next")
                .get(0).acknowledge();
        close(secondConn);
        expectOnlySentinel(c, q, plain,
                "the plain consumer got nothing while an exclusive consumer was there");
        close(plainConn);
        close(c);
    }

    /**
     * noLocal ({@code createConsumer(d, null, true)}, {@code createDurableSubscriber(t, name,
     * null, true)}): a topic subscriber with noLocal does not receive what its own connection
     * publishes, while a plain subscriber of the same connection does; a queue consumer with
     * noLocal leaves its connection's messages to other consumers (ActiveMQ applies noLocal to
     * every subscription); a durable subscriber with noLocal is not kept the messages of the
     * connection it was last active on, even while inactive; back on a new connection, that
     * one's messages are the ones it is not kept.
     */
    static void noLocal() throws Exception {
        Connection own = connect();
        Connection other = connect();
        Topic t = topic(own, "news");
        MessageConsumer noLocalSub =
                own.createSession(false, Session.AUTO_ACKNOWLEDGE).createConsumer(t, null, true);
        MessageConsumer plainSub = consumer(own, Session.AUTO_ACKNOWLEDGE, t);
        ok("a noLocal and a plain topic subscriber on one connection");
        sendTexts(own, t, List.of("own-1"));
        sendTexts(other, t, List.of("other-1"));
        receiveTexts(noLocalSub, List.of("other-1"),
                "the noLocal subscriber gets only the other connection's message");
        receiveTexts(plainSub, List.of("own-1", "other-1"), "the plain subscriber gets both");
        expectOnlySentinel(other, t, noLocalSub, "nothing more for the noLocal subscriber");

        Queue q = queue(own, "work");
        MessageConsumer noLocalQ =
                own.createSession(false, Session.AUTO_ACKNOWLEDGE).createConsumer(q, null, true);
        sendTexts(own, q, List.of("own-q"));
        sendTexts(other, q, List.of("other-q"));
        receiveTexts(noLocalQ, List.of("other-q"),
                "the noLocal queue consumer gets the other connection's message");
        MessageConsumer otherQ = consumer(other, Session.AUTO_ACKNOWLEDGE, q);
        receiveTexts(otherQ, List.of("own-q"),
                "its own connection's message waited for another consumer");

        String clientId = name("client");
        Topic dt = topic(own, "durable");
        Connection first = connect(url, clientId);
        Session fs = first.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d1 = fs.createDurableSubscriber(dt, "sub", null, true);
        sendTexts(first, dt, List.of("own-d1"));
        sendTexts(other, dt, List.of("other-d1"));
        receiveTexts(d1, List.of("other-d1"),
                "the noLocal durable subscriber gets only the other connection's message");
        d1.close();
        sendTexts(first, dt, List.of("own-d2"));
        sendTexts(other, dt, List.of("other-d2"));
        close(first);
        ok("both connections published while it was inactive, then its connection closed");
        Connection second = connect(url, clientId);
        Session ss = second.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d2 = ss.createDurableSubscriber(dt, "sub", null, true);
        receiveTexts(d2, List.of("other-d2"),
                "back on a new connection it gets the other connection's message");
        expectOnlySentinel(other, dt, d2,
                "its old connection's messages were not kept, active or not");
        sendTexts(second, dt, List.of("own-d3"));
        expectOnlySentinel(other, dt, d2, "nor are its new connection's");
        d2.close();
        ss.unsubscribe("sub");
        close(second);
        close(other);
        close(own);
    }

    /**
     * Consumer priorities ({@code queue://x?consumer.priority=N}): with a priority-0 consumer
     * (subscribed first) and a priority-10 one of prefetch 3 on a queue, the high one gets the
     * first 3 of 6 messages and the low one the other 3; once the high one has room again (a
     * transacted session committed what it took) the next message goes to it. An exclusive
     * consumer of higher priority takes over a queue from the first exclusive consumer; when
     * it closes, the first one has it again.
     */
    static void consumerPriority() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "orders");
        Connection lowConn = connect();
        MessageConsumer low = consumerWithOptions(lowConn, q, "consumer.prefetchSize=10");
        Connection highConn = connect();
        Session highSession = highConn.createSession(true, Session.SESSION_TRANSACTED);
        MessageConsumer high = highSession.createConsumer(highSession.createQueue(
                q.getQueueName() + "?consumer.priority=10&consumer.prefetchSize=3"));
        ok("a consumer of priority 0, then one of priority 10 with prefetch 3 on "
                + q.getQueueName());
        List<String> sent = bodies("order", 0, 6);
        sendTexts(c, q, sent);
        receiveTexts(high, sent.subList(0, 3), "the high-priority consumer gets the first 3");
        highSession.commit();
        ok("the high-priority consumer committed");
        expectOnlySentinel(c, q, high,
                "with room again, the high-priority consumer gets the next");
        highSession.commit();
        receiveTexts(low, sent.subList(3, 6), "the low-priority consumer gets the rest");
        close(highConn);
        expectOnlySentinel(c, q, low, "nothing more for the low-priority consumer");
        close(lowConn);

        Queue x = queue(c, "exclusive");
        Connection firstConn = connect();
        MessageConsumer first = consumerWithOptions(firstConn, x, "consumer.exclusive=true");
        Connection higherConn = connect();
        MessageConsumer higher =
                consumerWithOptions(higherConn, x, "consumer.exclusive=true&consumer.priority=5");
        ok("an exclusive consumer, then one of priority 5 on " + x.getQueueName());
        sendTexts(c, x, List.of("x-0"));
        receiveTexts(higher, List.of("x-0"), "the higher-priority exclusive consumer took over");
        close(higherConn);
        expectOnlySentinel(c, x, first,
                "then the first one has the queue again, and got nothing before");
        close(firstConn);
        close(c);
    }

    /**
     * Message groups (JMSXGroupID): two consumers on one queue, groups A and B interleaved;
     * each group's messages all reach one consumer, in order, the first of each flagged
     * JMSXGroupFirstForConsumer. When the consumer that owns group A closes, A's next messages
     * go to the other one, the first of them flagged again.
     */
    static void messageGroups() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "groups");
        Connection conn1 = connect();
        MessageConsumer k1 = consumer(conn1, Session.AUTO_ACKNOWLEDGE, q);
        Connection conn2 = connect();
        MessageConsumer k2 = consumer(conn2, Session.AUTO_ACKNOWLEDGE, q);
        ok("two consumers on " + q.getQueueName());
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        int perGroup = 10;
        for (int i = 0; i < perGroup; i++) {
            for (String g : List.of("A", "B")) {
                TextMessage m = s.createTextMessage(g + "-" + i);
                m.setStringProperty("JMSXGroupID", g);
                p.send(m);
            }
        }
        ok("sent groups A and B interleaved, " + perGroup + " each");
        Map<String, List<String>> got = new TreeMap<>(); // "consumer group" -> bodies
        Map<String, String> owner = new TreeMap<>(); // group -> consumer
        long deadline = System.currentTimeMillis() + receiveTimeoutMs;
        int received = 0;
        while (received < 2 * perGroup) {
            if (System.currentTimeMillis() > deadline) {
                throw fail("every grouped message received", 2 * perGroup, received + ": " + got);
            }
            for (String who : List.of("1", "2")) {
                Message m = (who.equals("1") ? k1 : k2).receive(50);
                if (m == null) {
                    continue;
                }
                received++;
                String g = m.getStringProperty("JMSXGroupID");
                List<String> list = got.computeIfAbsent(who + " " + g, k -> new ArrayList<>());
                boolean firstForConsumer = m.getBooleanProperty("JMSXGroupFirstForConsumer");
                check("JMSXGroupFirstForConsumer on " + text(m, "grouped") + " (consumer " + who
                        + ")", firstForConsumer == list.isEmpty(), list.isEmpty(),
                        firstForConsumer);
                list.add(text(m, "grouped"));
                String before = owner.putIfAbsent(g, who);
                check("group " + g + " stays with one consumer", before == null
                        || before.equals(who), "consumer " + before, "consumer " + who);
            }
        }
        for (String g : List.of("A", "B")) {
            expectEq("group " + g + " in order on consumer " + owner.get(g), bodies(g, 0, perGroup),
                    got.get(owner.get(g) + " " + g));
        }
        String ownerA = owner.get("A");
        close(ownerA.equals("1") ? conn1 : conn2);
        MessageConsumer other = ownerA.equals("1") ? k2 : k1;
        ok("closed consumer " + ownerA + ", which owned group A");
        for (int i = perGroup; i < perGroup + 2; i++) {
            TextMessage m = s.createTextMessage("A-" + i);
            m.setStringProperty("JMSXGroupID", "A");
            p.send(m);
        }
        List<Message> moved = receiveTexts(other, bodies("A", perGroup, perGroup + 2),
                "group A moves to the other consumer");
        boolean[] flags = {moved.get(0).getBooleanProperty("JMSXGroupFirstForConsumer"),
            moved.get(1).getBooleanProperty("JMSXGroupFirstForConsumer")};
        expectEq("JMSXGroupFirstForConsumer on the moved group's messages", "[true, false]",
                Arrays.toString(flags));
        close(ownerA.equals("1") ? conn2 : conn1);
        close(c);
    }

    /**
     * A durable subscriber gets what was published while it was offline, non-persistent
     * messages included; unsubscribe drops the subscription and its backlog.
     */
    static void durableTopic() throws Exception {
        String clientId = name("client");
        String sub = "sub";
        Connection publisher = connect();
        Topic t = topic(publisher, "durable");
        Session ps = publisher.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(t);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        p.send(ps.createTextMessage("before-the-subscription"));

        Connection c1 = connect(url, clientId);
        Session s1 = c1.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d1 = s1.createDurableSubscriber(t, sub);
        p.send(ps.createTextMessage("online"));
        receiveTexts(d1, List.of("online"), "durable subscriber online");
        d1.close();
        close(c1);
        ok("durable subscriber offline");

        List<String> offline = new ArrayList<>(bodies("offline", 0, 5));
        for (String body : offline) {
            p.send(ps.createTextMessage(body));
        }
        // A non-persistent one is kept for it too, in memory (ActiveMQ's keepDurableSubsActive,
        // on by default); last, as ActiveMQ hands out an offline backlog's persistent ones first.
        p.send(ps.createTextMessage("offline-non-persistent"), DeliveryMode.NON_PERSISTENT, 4, 0);
        offline.add("offline-non-persistent");
        ok("published 5 persistent and 1 non-persistent while it was offline");

        Connection c2 = connect(url, clientId);
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d2 = s2.createDurableSubscriber(t, sub);
        String what = "published while offline, received on reconnect";
        for (Message m : receiveTexts(d2, offline, what)) {
            check("JMSDestination", t.equals(m.getJMSDestination()), t, m.getJMSDestination());
        }
        expectOnlySentinel(publisher, t, d2, "nothing else kept for the subscription");
        d2.close();
        s2.unsubscribe(sub);
        ok("unsubscribed");
        close(c2);

        p.send(ps.createTextMessage("after-unsubscribe"));
        Connection c3 = connect(url, clientId);
        Session s3 = c3.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber d3 = s3.createDurableSubscriber(t, sub);
        expectOnlySentinel(publisher, t, d3,
                "a new subscription of the same name starts empty (unsubscribe dropped the old)");
        d3.close();
        s3.unsubscribe(sub);
        close(c3);
        close(publisher);
    }

    /**
     * A client id belongs to one connection at a time: a second connection setting it fails to
     * start with InvalidClientIDException, and the id is free again once the first closes.
     */
    static void clientId() throws Exception {
        String clientId = name("client");
        Connection first = connect(url, clientId);
        Connection second = factory(url).createConnection();
        try {
            second.setClientID(clientId);
            second.start();
            throw fail("a second connection with the client id of an open one",
                    "InvalidClientIDException", "started");
        } catch (InvalidClientIDException e) {
            check("the refusal names the client id", String.valueOf(e.getMessage())
                    .contains(clientId), clientId, e.getMessage());
            ok("a second connection with an open one's client id is refused: "
                    + e.getMessage());
        } finally {
            try {
                second.close();
            } catch (JMSException ignored) {
                // The broker closes a refused connection; there is nothing to close.
            }
        }
        close(first);
        Connection third = connect(url, clientId);
        ok("the client id is free once its connection closed");
        close(third);
    }

    /**
     * Request/reply: a responder answers each request on JMSReplyTo (a TemporaryQueue of the
     * requester's connection) with the request's JMSCorrelationID.
     */
    static void tempQueueReply() throws Exception {
        Connection responderConnection = connect();
        Queue service = queue(responderConnection, "service");
        Session rs = responderConnection.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer replier = rs.createProducer(null);
        AtomicReference<String> problem = new AtomicReference<>();
        AtomicLong answered = new AtomicLong();
        rs.createConsumer(service).setMessageListener(request -> {
            try {
                Destination to = request.getJMSReplyTo();
                if (!(to instanceof TemporaryQueue)) {
                    problem.compareAndSet(null, "JMSReplyTo of a request is " + to);
                    return;
                }
                String body = ((TextMessage) request).getText();
                TextMessage reply = rs.createTextMessage("reply to " + body);
                reply.setJMSCorrelationID(request.getJMSCorrelationID());
                replier.send(to, reply);
                answered.incrementAndGet();
            } catch (Exception e) {
                problem.compareAndSet(null, describe(e));
            }
        });
        ok("responder listening on " + service.getQueueName());

        Connection c = connect();
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TemporaryQueue replies = s.createTemporaryQueue();
        ok("created temporary queue " + replies.getQueueName());
        MessageConsumer replyConsumer = s.createConsumer(replies);
        MessageProducer requester = s.createProducer(service);
        for (int i = 0; i < 3; i++) {
            TextMessage request = s.createTextMessage("request-" + i);
            request.setJMSReplyTo(replies);
            request.setJMSCorrelationID("corr-" + i);
            requester.send(request);
            Message reply = replyConsumer.receive(receiveTimeoutMs);
            if (reply == null) {
                throw new Failure("FAIL reply to request-" + i + ": expected one within "
                        + receiveTimeoutMs + " ms, got none (responder answered " + answered.get()
                        + "; responder problem: " + problem.get() + ")");
            }
            expectEq("reply " + i + ": body", "reply to request-" + i, text(reply, "reply"));
            expectEq("reply " + i + ": JMSCorrelationID", "corr-" + i, reply.getJMSCorrelationID());
            expectEq("reply " + i + ": JMSDestination", replies, reply.getJMSDestination());
            // Sent PERSISTENT (the default): so it arrives, though a temporary queue's messages
            // are never stored.
            expectEq("reply " + i + ": JMSDeliveryMode", DeliveryMode.PERSISTENT,
                    reply.getJMSDeliveryMode());
        }
        expectEq("responder problems", null, problem.get());
        close(responderConnection);

        // A responder that connects after the temporary queue was created also answers (its
        // connection learns of the temporary queue when it starts).
        Connection late = connect();
        Session ls = late.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer lateReplier = ls.createProducer(null);
        MessageConsumer lateService = ls.createConsumer(service);
        TextMessage request = s.createTextMessage("request-late");
        request.setJMSReplyTo(replies);
        request.setJMSCorrelationID("corr-late");
        requester.send(request);
        Message got = receive(lateService, "the late responder gets the request");
        expectEq("the late responder's request: JMSReplyTo", replies, got.getJMSReplyTo());
        TextMessage reply = ls.createTextMessage("late reply");
        reply.setJMSCorrelationID(got.getJMSCorrelationID());
        try {
            lateReplier.send(got.getJMSReplyTo(), reply);
        } catch (JMSException e) {
            throw fail("a responder connected after the temporary queue was created replies to it",
                    "the reply sent", describe(e));
        }
        Message answer = receive(replyConsumer, "the reply of the late responder");
        expectEq("the late responder's reply: body", "late reply", text(answer, "reply"));
        expectEq("the late responder's reply: JMSCorrelationID", "corr-late",
                answer.getJMSCorrelationID());
        close(late);

        replyConsumer.close();
        replies.delete();
        ok("deleted the temporary queue");

        // A client that does not watch advisories (watchTopicAdvisories=false) cannot know the
        // temporary queue is gone and sends anyway: the broker refuses, as ActiveMQ's does,
        // rather than making it an ordinary queue anyone could read. So is a send to a
        // temporary queue that never existed.
        ActiveMQConnectionFactory blindFactory = factory(url);
        blindFactory.setWatchTopicAdvisories(false);
        Connection blind = blindFactory.createConnection();
        OPEN.add(blind);
        blind.start();
        Session bs = blind.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer anywhere = bs.createProducer(null);
        for (Destination gone : List.of(replies, new ActiveMQTempQueue("ID:never-made-1:1:1"))) {
            String name = ((TemporaryQueue) gone).getQueueName();
            String refusal = null;
            try {
                anywhere.send(gone, bs.createTextMessage("to nobody"));
            } catch (JMSException e) {
                // ActiveMQ: DestinationDoesNotExistException naming it.
                refusal = e.toString();
            }
            check("a send to " + name + " (deleted or never made) is refused",
                    refusal != null && refusal.contains(name) && (refusal.contains("does not exist")
                            || refusal.contains("DestinationDoesNotExist")),
                    "a JMSException naming " + name + " that does not exist",
                    refusal == null ? "the send accepted" : refusal);
            ok("a send to the temporary queue " + name + " is refused: " + refusal);
        }
        close(blind);
        close(c);
    }

    /**
     * Selectors on an int property, a string property and JMSType: a selecting consumer gets
     * exactly the matching messages, in order; the others stay for a consumer without one.
     */
    static void selectors() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "selectors");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        for (int i = 0; i < 10; i++) {
            TextMessage m = s.createTextMessage("m-" + i);
            m.setIntProperty("n", i);
            m.setStringProperty("color", i % 2 == 0 ? "red" : "blue");
            m.setJMSType(i % 3 == 0 ? "kind-a" : "kind-b");
            p.send(m);
        }
        ok("sent m-0..m-9 with n=i, color red (even) / blue (odd), "
                + "JMSType kind-a (i%3==0) / kind-b");

        MessageConsumer high = s.createConsumer(q, "n > 6");
        receiveTexts(high, List.of("m-7", "m-8", "m-9"), "selector n > 6");
        TextMessage end1 = s.createTextMessage("sentinel-high");
        end1.setIntProperty("n", 1000);
        p.send(end1);
        receiveTexts(high, List.of("sentinel-high"), "selector n > 6: nothing else matched");
        high.close();

        MessageConsumer red = s.createConsumer(q, "color = 'red' AND JMSType = 'kind-a'");
        receiveTexts(red, List.of("m-0", "m-6"), "selector color = 'red' AND JMSType = 'kind-a'");
        TextMessage end2 = s.createTextMessage("sentinel-red");
        end2.setStringProperty("color", "red");
        end2.setJMSType("kind-a");
        p.send(end2);
        receiveTexts(red, List.of("sentinel-red"), "string/JMSType selector: nothing else matched");
        red.close();

        MessageConsumer in = s.createConsumer(q, "color IN ('blue') AND n BETWEEN 2 AND 4");
        receiveTexts(in, List.of("m-3"), "selector color IN ('blue') AND n BETWEEN 2 AND 4");
        in.close();

        MessageConsumer all = s.createConsumer(q);
        receiveTexts(all, List.of("m-1", "m-2", "m-4", "m-5"),
                "the non-matching messages remain, in order, for a consumer without selector");
        expectOnlySentinel(c, q, all, "nothing more in the queue");
        close(c);
    }

    /** A QueueBrowser shows the queue's messages without consuming them. */
    static void browser() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "browse");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        expectEq("browsing an empty queue", List.of(), browse(s, q, null));
        List<String> sent = bodies("browse", 0, 5);
        sendTexts(c, q, sent);
        expectEq("browse", sent, browse(s, q, null));
        expectEq("browse again: nothing was consumed", sent, browse(s, q, null));
        MessageProducer p = s.createProducer(q);
        TextMessage tagged = s.createTextMessage("tagged");
        tagged.setStringProperty("tag", "yes");
        p.send(tagged);
        expectEq("browse with selector tag = 'yes'", List.of("tagged"),
                browse(s, q, "tag = 'yes'"));
        List<String> everything = new ArrayList<>(sent);
        everything.add("tagged");
        MessageConsumer consumer = s.createConsumer(q);
        receiveTexts(consumer, everything, "a consumer still gets every browsed message");
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        consumer.close();
        expectEq("browsing the consumed queue", List.of(), browse(s, q, null));
        close(c);
    }

    /**
     * A QueueBrowser of a queue deeper than the browser's prefetch (500) and the broker's browse
     * page (ActiveMQ's {@code maxBrowsePageSize}, 400) shows every message in order, in an
     * AUTO_ACKNOWLEDGE session, a CLIENT_ACKNOWLEDGE one and a transacted one, with a selector
     * that matches every seventh message; a consumer then still gets them all. A second queue
     * is browsed with prefetch 0 (the client pulls each copy), then consumed.
     * Options {@code count} (default 2000) and {@code pull_count} (default 200).
     */
    static void browserDeep() throws Exception {
        int count = (int) longOpt("count", 2000);
        Connection c = connect();
        Queue q = queue(c, "browse-deep");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        List<String> sent = bodies("deep", 0, count);
        List<String> sevenths = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            TextMessage m = s.createTextMessage(sent.get(i));
            m.setIntProperty("n", i);
            p.send(m);
            if (i % 7 == 0) {
                sevenths.add(sent.get(i));
            }
        }
        expectEq("browse (AUTO_ACKNOWLEDGE)", sent, browse(s, q, null));
        Session client = c.createSession(false, Session.CLIENT_ACKNOWLEDGE);
        expectEq("browse (CLIENT_ACKNOWLEDGE)", sent, browse(client, q, null));
        Session transacted = c.createSession(true, Session.SESSION_TRANSACTED);
        expectEq("browse (transacted)", sent, browse(transacted, q, null));
        transacted.commit();
        expectEq("browse with selector n % 7 = 0", sevenths, browse(s, q, "n % 7 = 0"));
        MessageConsumer consumer = s.createConsumer(q);
        receiveTexts(consumer, sent, "a consumer still gets every browsed message");
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        consumer.close();

        // Prefetch 0: the client pulls each copy, and its browser then waits for the answer
        // with a lost-wakeup race (ActiveMQQueueBrowser.waitForMessage sends the pull, then
        // waits up to 2 s on a monitor the answer may have notified already): about one pull
        // in a hundred costs 2 s, against ActiveMQ too. So a shallower queue and a longer wait.
        int pulled = (int) longOpt("pull_count", 200);
        Queue pq = queue(c, "browse-pull");
        List<String> pullSent = bodies("pull", 0, pulled);
        sendTexts(c, pq, pullSent);
        Connection pulling = connect(withOption(url, "jms.prefetchPolicy.queueBrowserPrefetch=0"),
                null);
        Session ps = pulling.createSession(false, Session.AUTO_ACKNOWLEDGE);
        expectEq("browse with prefetch 0 (a pull per message)", pullSent,
                browse(ps, pq, null, 3 * receiveTimeoutMs));
        close(pulling);
        MessageConsumer pullConsumer = s.createConsumer(pq);
        receiveTexts(pullConsumer, pullSent, "a consumer gets every message browsed by pulls");
        expectOnlySentinel(c, pq, pullConsumer, "nothing more in the pulled queue");
        pullConsumer.close();
        close(c);
    }

    /**
     * Delayed delivery, with the broker's scheduler on (ActiveMQ's {@code schedulerSupport},
     * ferromq's {@code scheduler_support}): a message with the long property
     * {@code AMQ_SCHEDULED_DELAY} (option {@code delay_ms}, default 1500) arrives no earlier than
     * that long after its send, after a message sent later without it, without the property
     * and with {@code scheduledJobId}; a browser does not see it while it waits; a delayed send
     * in a transaction counts its delay from the commit; with {@code AMQ_SCHEDULED_PERIOD} and
     * {@code AMQ_SCHEDULED_REPEAT} 2 it arrives three times, a period apart, each time with a
     * message id of its own. (A delay that is not a number never
     * reaches the broker from this client: {@code setStringProperty("AMQ_SCHEDULED_DELAY",
     * "soon")} throws in the client, which converts the scheduling properties to long.)
     */
    static void scheduledDelay() throws Exception {
        long delay = longOpt("delay_ms", 1500);
        Connection c = connect();
        Queue q = queue(c, "scheduled");
        MessageConsumer consumer = consumer(c, Session.AUTO_ACKNOWLEDGE, q);
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        TextMessage later = s.createTextMessage("later");
        later.setLongProperty("AMQ_SCHEDULED_DELAY", delay);
        long sent = System.currentTimeMillis();
        p.send(later);
        p.send(s.createTextMessage("now"));
        receiveTexts(consumer, List.of("now"), "the message sent after the delayed one, first");
        List<String> browsed = browse(s, q, null);
        if (System.currentTimeMillis() - sent < delay) {
            expectEq("a browser does not see the delayed message before it is due", List.of(),
                    browsed);
        }
        Message m = receive(consumer, "the delayed message");
        long after = System.currentTimeMillis() - sent;
        expectEq("the delayed message", "later", text(m, "the delayed message"));
        check("delivered no earlier than its delay after the send", after >= delay,
                ">= " + delay + " ms", after + " ms");
        ok("delivered " + after + " ms after the send");
        expectEq("AMQ_SCHEDULED_DELAY is gone", false, m.propertyExists("AMQ_SCHEDULED_DELAY"));
        expectEq("scheduledJobId is there", true, m.propertyExists("scheduledJobId"));

        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageProducer tp = tx.createProducer(q);
        tp.setDeliveryMode(DeliveryMode.PERSISTENT);
        TextMessage txm = tx.createTextMessage("committed");
        txm.setLongProperty("AMQ_SCHEDULED_DELAY", delay);
        tp.send(txm);
        // Time passes between the send and the commit: the delay starts at the commit.
        Thread.sleep(delay);
        long committed = System.currentTimeMillis();
        tx.commit();
        m = receive(consumer, "the delayed message sent in a transaction");
        after = System.currentTimeMillis() - committed;
        expectEq("the delayed message sent in a transaction", "committed",
                text(m, "the transaction's message"));
        check("delivered no earlier than its delay after the commit", after >= delay,
                ">= " + delay + " ms", after + " ms");
        ok("delivered " + after + " ms after the commit");

        TextMessage ticks = s.createTextMessage("tick");
        ticks.setLongProperty("AMQ_SCHEDULED_DELAY", delay);
        ticks.setLongProperty("AMQ_SCHEDULED_PERIOD", delay);
        ticks.setIntProperty("AMQ_SCHEDULED_REPEAT", 2);
        sent = System.currentTimeMillis();
        p.send(ticks);
        Set<String> ids = new HashSet<>();
        for (int k = 0; k < 3; k++) {
            String what = "delivery " + k + " of a message repeated twice";
            m = receive(consumer, what);
            after = System.currentTimeMillis() - sent;
            expectEq(what, "tick", text(m, what));
            long due = delay * (k + 1);
            check(what + " no earlier than " + due + " ms after the send", after >= due,
                    ">= " + due + " ms", after + " ms");
            ids.add(m.getJMSMessageID());
        }
        expectEq("each delivery of the repeated message has an id of its own", 3, ids.size());
        expectOnlySentinel(c, q, consumer, "nothing more in the queue");
        close(c);
    }

    /**
     * A delayed topic message is routed when it is due, as a send made then: a durable
     * subscription and a non-durable consumer created after the send (option {@code delay_ms},
     * default 1500) both get it, no earlier than its delay after the send, and a non-persistent
     * one is still non-persistent (JMSDeliveryMode unchanged by the wait).
     */
    static void scheduledTopicLater() throws Exception {
        long delay = longOpt("delay_ms", 1500);
        Connection producer = connect();
        Topic t = topic(producer, "scheduled-topic");
        Session ps = producer.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(t);
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        TextMessage later = ps.createTextMessage("later");
        later.setLongProperty("AMQ_SCHEDULED_DELAY", delay);
        long sent = System.currentTimeMillis();
        p.send(later);
        Connection c = connect(url, name("scheduled-topic-client"));
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        TopicSubscriber durable = s.createDurableSubscriber(t, "later");
        MessageConsumer plain = s.createConsumer(t);
        check("the subscriptions were made before the message was due",
                System.currentTimeMillis() - sent < delay, "< " + delay + " ms",
                (System.currentTimeMillis() - sent) + " ms");
        for (MessageConsumer consumer : List.of(durable, plain)) {
            String what = consumer == durable
                    ? "the delayed message, on a durable subscription made after the send"
                    : "the delayed message, on a consumer made after the send";
            Message m = receive(consumer, what);
            long after = System.currentTimeMillis() - sent;
            expectEq(what, "later", text(m, what));
            check(what + ", no earlier than its delay", after >= delay, ">= " + delay + " ms",
                    after + " ms");
            expectEq(what + ", non-persistent", DeliveryMode.NON_PERSISTENT,
                    m.getJMSDeliveryMode());
        }
        ok("delivered to both subscriptions made after the send");
        durable.close();
        plain.close();
        s.unsubscribe("later");
        close(c);
        close(producer);
    }

    /**
     * The scheduler's management destination, used as ActiveMQ's "Delay and Schedule Message
     * Feature" page shows (scheduler on): requests are messages sent to the topic
     * {@code ActiveMQ.Scheduler.Management} with {@code AMQ_SCHEDULER_ACTION}. Three messages
     * are scheduled on a queue: {@code in-90s} (delay 90 s), {@code in-60s} (60 s) and
     * {@code repeated} (120 s, period 10 s, 2 repeats). Then:
     * <ul>
     * <li>BROWSE (reply-to a temporary queue) gets one copy per job (one for the repeated
     * message), in due order: its body, the reply-to as JMSDestination, non-persistent, an id
     * of its own, JMSType {@code Advisory}, the queue as its original destination, a
     * {@code scheduledJobId} of its own and the scheduling properties it was sent with
     * ({@code AMQ_SCHEDULED_DELAY}, for the repeated one also {@code _PERIOD} and
     * {@code _REPEAT});</li>
     * <li>BROWSE with {@code AMQ_SCHEDULER_ACTION_START_TIME} and {@code _END_TIME} (string
     * properties, as ActiveMQ's tests set them, or long ones) gets the jobs whose next delivery
     * is in that range: a range holding only the repeated message's later repeats gets
     * nothing;</li>
     * <li>REMOVE with the {@code scheduledJobId} of a browsed copy removes that job only;</li>
     * <li>REMOVEALL with a range removes the jobs whose next delivery is in it, the repeated
     * message's later repeats with it;</li>
     * <li>REMOVEALL removes the rest: a BROWSE then gets nothing;</li>
     * <li>the queue's consumer gets none of the scheduled messages meanwhile.</li>
     * </ul>
     * Each browse's replies are all there when its send returns (a persistent send waits for
     * the broker): the copies are received with the usual timeout, and a sentinel sent to the
     * reply queue afterwards must come next. The ranges are far (15 s or more) from every due
     * time, so the sends may take that long.
     */
    static void schedulerManagement() throws Exception {
        Connection c = connect();
        Queue q = queue(c, "scheduled");
        MessageConsumer consumer = consumer(c, Session.AUTO_ACKNOWLEDGE, q);
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        Map<String, String> sentIds = new LinkedHashMap<>();
        long before = System.currentTimeMillis();
        for (Object[] job : new Object[][] {{"in-90s", 90_000L, 0L, 0}, {"in-60s", 60_000L, 0L, 0},
                {"repeated", 120_000L, 10_000L, 2}}) {
            TextMessage m = s.createTextMessage((String) job[0]);
            m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_DELAY, (Long) job[1]);
            if ((Integer) job[3] > 0) {
                m.setLongProperty(ScheduledMessage.AMQ_SCHEDULED_PERIOD, (Long) job[2]);
                m.setIntProperty(ScheduledMessage.AMQ_SCHEDULED_REPEAT, (Integer) job[3]);
            }
            p.send(m);
            sentIds.put((String) job[0], m.getJMSMessageID());
        }
        long after = System.currentTimeMillis();
        ok("scheduled in-90s, in-60s and repeated (in 120 s, then twice 10 s apart) on "
                + q.getQueueName());

        MessageProducer manage = s.createProducer(
                s.createTopic(ScheduledMessage.AMQ_SCHEDULER_MANAGEMENT_DESTINATION));
        TemporaryQueue replies = s.createTemporaryQueue();
        MessageConsumer browsed = s.createConsumer(replies);

        List<Message> copies = scheduleBrowse(c, s, manage, replies, browsed, null, null,
                List.of("in-60s", "in-90s", "repeated"), "BROWSE");
        Set<String> jobIds = new HashSet<>();
        Map<String, String> jobOf = new LinkedHashMap<>();
        for (Message m : copies) {
            String body = text(m, "browsed copy");
            String what = "the browsed copy of " + body;
            expectEq(what + ": JMSDestination", replies, m.getJMSDestination());
            expectEq(what + ": JMSDeliveryMode", DeliveryMode.NON_PERSISTENT,
                    m.getJMSDeliveryMode());
            check(what + ": a JMSMessageID of its own", m.getJMSMessageID() != null
                    && !m.getJMSMessageID().equals(sentIds.get(body)), "not "
                    + sentIds.get(body), m.getJMSMessageID());
            expectEq(what + ": JMSType", "Advisory", m.getJMSType());
            expectEq(what + ": original destination", q,
                    ((ActiveMQMessage) m).getOriginalDestination());
            String jobId = m.getStringProperty(ScheduledMessage.AMQ_SCHEDULED_ID);
            check(what + ": scheduledJobId", jobId != null && !jobId.isEmpty(), "a job id",
                    jobId);
            jobIds.add(jobId);
            jobOf.put(body, jobId);
            long delay = body.equals("in-60s") ? 60_000 : body.equals("in-90s") ? 90_000 : 120_000;
            expectEq(what + ": AMQ_SCHEDULED_DELAY", delay,
                    m.getLongProperty(ScheduledMessage.AMQ_SCHEDULED_DELAY));
            if (body.equals("repeated")) {
                expectEq(what + ": AMQ_SCHEDULED_PERIOD", 10_000L,
                        m.getLongProperty(ScheduledMessage.AMQ_SCHEDULED_PERIOD));
                expectEq(what + ": AMQ_SCHEDULED_REPEAT", 2,
                        m.getIntProperty(ScheduledMessage.AMQ_SCHEDULED_REPEAT));
            }
        }
        expectEq("each job has a scheduledJobId of its own", 3, jobIds.size());

        scheduleBrowse(c, s, manage, replies, browsed, String.valueOf(after + 75_000),
                String.valueOf(before + 105_000), List.of("in-90s"),
                "BROWSE from 75 s to 105 s (string properties)");
        scheduleBrowse(c, s, manage, replies, browsed, after + 50_000, before + 100_000,
                List.of("in-60s", "in-90s"), "BROWSE from 50 s to 100 s (long properties)");
        scheduleBrowse(c, s, manage, replies, browsed, String.valueOf(after + 125_000),
                String.valueOf(before + 145_000), List.of(),
                "BROWSE from 125 s to 145 s (only the repeated message's later repeats)");

        Message remove = s.createMessage();
        remove.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION,
                ScheduledMessage.AMQ_SCHEDULER_ACTION_REMOVE);
        remove.setStringProperty(ScheduledMessage.AMQ_SCHEDULED_ID, jobOf.get("in-90s"));
        manage.send(remove);
        ok("REMOVE sent with the scheduledJobId of the browsed in-90s");
        scheduleBrowse(c, s, manage, replies, browsed, null, null,
                List.of("in-60s", "repeated"), "BROWSE after the REMOVE");

        Message removeRange = s.createMessage();
        removeRange.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION,
                ScheduledMessage.AMQ_SCHEDULER_ACTION_REMOVEALL);
        removeRange.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_START_TIME,
                String.valueOf(after + 105_000));
        removeRange.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_END_TIME,
                String.valueOf(before + 125_000));
        manage.send(removeRange);
        ok("REMOVEALL sent from 105 s to 125 s (the repeated message's first delivery)");
        scheduleBrowse(c, s, manage, replies, browsed, null, null, List.of("in-60s"),
                "BROWSE after the REMOVEALL in range (the repeats are gone with it)");

        Message removeAll = s.createMessage();
        removeAll.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION,
                ScheduledMessage.AMQ_SCHEDULER_ACTION_REMOVEALL);
        manage.send(removeAll);
        ok("REMOVEALL sent");
        scheduleBrowse(c, s, manage, replies, browsed, null, null, List.of(),
                "BROWSE after the REMOVEALL");

        expectOnlySentinel(c, q, consumer,
                "none of the scheduled messages was delivered to the queue's consumer");
        close(c);
    }

    /**
     * Sends a BROWSE request (with a start and an end time unless {@code start} is null) whose
     * reply-to is {@code replies}, receives the copies on {@code browsed} and checks their
     * bodies, in order, and that nothing else arrives: a sentinel sent to {@code replies} after
     * them is the next message. Answers the copies.
     */
    static List<Message> scheduleBrowse(Connection c, Session s, MessageProducer manage,
            TemporaryQueue replies, MessageConsumer browsed, Object start, Object end,
            List<String> expected, String what) throws Exception {
        Message request = s.createMessage();
        request.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION,
                ScheduledMessage.AMQ_SCHEDULER_ACTION_BROWSE);
        if (start instanceof Long) {
            request.setLongProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_START_TIME, (Long) start);
            request.setLongProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_END_TIME, (Long) end);
        } else if (start != null) {
            request.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_START_TIME,
                    (String) start);
            request.setStringProperty(ScheduledMessage.AMQ_SCHEDULER_ACTION_END_TIME,
                    (String) end);
        }
        request.setJMSReplyTo(replies);
        manage.send(request);
        List<Message> copies = receiveTexts(browsed, expected, what);
        expectOnlySentinel(c, replies, browsed, what + ": nothing more");
        return copies;
    }

    static List<String> browse(Session s, Queue q, String selector) throws Exception {
        return browse(s, q, selector, receiveTimeoutMs);
    }

    static List<String> browse(Session s, Queue q, String selector, long timeoutMs)
            throws Exception {
        QueueBrowser b = selector == null ? s.createBrowser(q) : s.createBrowser(q, selector);
        List<String> out = new ArrayList<>();
        long end = System.currentTimeMillis() + timeoutMs;
        for (Enumeration<?> e = b.getEnumeration(); e.hasMoreElements();) {
            out.add(((TextMessage) e.nextElement()).getText());
            if (System.currentTimeMillis() > end) {
                throw new Failure("FAIL browse: not finished within " + timeoutMs
                        + " ms; got " + out);
            }
        }
        b.close();
        return out;
    }

    /**
     * Prefetch 0 ({@code jms.prefetchPolicy.all=0}): the client pulls each message
     * (MessagePull); receive(timeout) and receiveNoWait() work, two consumers share a queue
     * message by message, and an empty queue answers a pull with nothing.
     */
    static void prefetchZero() throws Exception {
        String pullUrl = withOption(url, "jms.prefetchPolicy.all=0");
        Connection c = connect(pullUrl, null);
        Queue q = queue(c, "pull");
        sendTexts(c, q, bodies("pull", 0, 4));
        Session sa = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Session sb = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer a = sa.createConsumer(q);
        MessageConsumer b = sb.createConsumer(q);
        receiveTexts(a, List.of("pull-0"), "consumer A receive(timeout)");
        receiveTexts(b, List.of("pull-1"), "consumer B receive(timeout): A prefetched nothing");
        Message m = a.receiveNoWait();
        expectEq("consumer A receiveNoWait()", "pull-2",
                m == null ? null : text(m, "receiveNoWait"));
        m = b.receiveNoWait();
        expectEq("consumer B receiveNoWait()", "pull-3",
                m == null ? null : text(m, "receiveNoWait"));

        long t0 = System.nanoTime();
        m = a.receiveNoWait();
        expectEq("receiveNoWait() on an empty queue", null, m);
        m = a.receive(1000);
        long ms = (System.nanoTime() - t0) / 1_000_000;
        expectEq("receive(1000) on an empty queue", null, m);
        check("an empty pull is answered after about its timeout", ms >= 900 && ms < 15000,
                "900..15000 ms", ms + " ms");
        ok("an empty pull is answered after about its timeout (" + ms + " ms)");

        // A pull waiting when a message arrives gets it.
        AtomicReference<Object> got = new AtomicReference<>();
        Thread waiter = new Thread(() -> {
            try {
                Message w = b.receive(receiveTimeoutMs);
                got.set(w == null ? "nothing" : ((TextMessage) w).getText());
            } catch (Exception e) {
                got.set(e);
            }
        });
        waiter.start();
        sendTexts(c, q, List.of("late"));
        waiter.join(receiveTimeoutMs + 5000);
        expectEq("a waiting receive(timeout) gets a message sent meanwhile", "late", got.get());

        // Acknowledged: nothing comes back to a new consumer.
        a.close();
        b.close();
        Connection again = connect(pullUrl, null);
        Session s2 = again.createSession(false, Session.AUTO_ACKNOWLEDGE);
        expectOnlySentinel(c, q, s2.createConsumer(q), "pulled messages were acknowledged");
        close(again);
        close(c);
    }

    // ----- failover pair -----------------------------------------------------------------------

    /**
     * Producer flow control: {@code count} non-persistent text messages of {@code size} bytes
     * sent (asynchronously, the client's default for them) by a producer on one connection; a
     * consumer on another starts only once the producer has sent them all or has stalled (no
     * send completed for 1 s: the broker stopped reading it). Every message arrives, once, in
     * order, and the producer finishes. The broker's side (how much it held) is the test's.
     */
    /**
     * A message over the broker's frame limit ({@code max=BYTES}, the broker's configured
     * limit; the test sends twice that), on a failover URL as applications use: a synchronous
     * send fails with an exception instead of the failover transport re-sending it forever (the
     * broker carries on: ferromq keeps the connection, stock ActiveMQ's client closes the session); in a transaction (an asynchronous send) the send or the commit
     * fails and nothing of the transaction is delivered; the next transaction commits.
     */
    static void oversized() throws Exception {
        int max = (int) longOpt("max", 1 << 20);
        byte[] big = new byte[2 * max];
        Connection c = connect("failover:(" + url + ")?initialReconnectDelay=100&maxReconnectAttempts=3", null);
        Queue q = queue(c, "oversized");
        Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(q);
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        BytesMessage m = s.createBytesMessage();
        m.writeBytes(big);
        JMSException refused = null;
        try {
            p.send(m);
        } catch (JMSException e) {
            refused = e;
        }
        check("a synchronous send over the frame limit fails", refused != null, "a JMSException",
                "send() returned");
        ok("the oversized send failed: " + refused.getMessage());
        // Stock ActiveMQ closes the session (its client refuses the frame and fails the
        // transport); ferromq keeps it. Either way a new connection carries on.
        c = connect("failover:(" + url + ")?initialReconnectDelay=100&maxReconnectAttempts=3", null);
        s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        p = s.createProducer(q);
        p.send(s.createTextMessage("after-sync"));
        Session tx = c.createSession(true, Session.SESSION_TRANSACTED);
        MessageProducer tp = tx.createProducer(q);
        tp.send(tx.createTextMessage("in-doomed-tx"));
        BytesMessage m2 = tx.createBytesMessage();
        m2.writeBytes(big);
        JMSException told = null;
        try {
            // Stock ActiveMQ (tight encoding) refuses it in the client, here; ferromq (loose
            // encoding, the size known only to the broker) makes the commit fail.
            tp.send(m2);
            tp.send(tx.createTextMessage("also-in-doomed-tx"));
            tx.commit();
        } catch (JMSException e) {
            told = e;
        }
        check("a transaction with an oversized send is not committed", told != null,
                "a JMSException from send() or commit()", "commit() returned");
        ok("the transaction failed: " + told.getClass().getSimpleName());
        // Stock ActiveMQ's client has disposed of this connection; ferromq rolled the
        // transaction back and kept it. A new connection again for what follows.
        c = connect("failover:(" + url + ")?initialReconnectDelay=100&maxReconnectAttempts=3", null);
        s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        tx = c.createSession(true, Session.SESSION_TRANSACTED);
        tp = tx.createProducer(q);
        tp.send(tx.createTextMessage("next-tx"));
        tx.commit();
        MessageConsumer consumer = s.createConsumer(q);
        List<String> got = new ArrayList<>();
        for (Message r; (r = consumer.receive(2000)) != null; ) {
            got.add(r instanceof TextMessage ? ((TextMessage) r).getText() : "a BytesMessage");
        }
        expectEq("what the queue holds", List.of("after-sync", "next-tx"), got);
        close(c);
    }

    static void flowControl() throws Exception {
        int n = (int) longOpt("count", 3000);
        int size = (int) longOpt("size", 1024);
        String pad = "f".repeat(Math.max(0, size - 6));
        Connection pc = connect();
        Queue q = queue(pc, "flow");
        Session ps = pc.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(q);
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        AtomicLong sent = new AtomicLong();
        AtomicLong lastSend = new AtomicLong(System.nanoTime());
        AtomicReference<Throwable> error = new AtomicReference<>();
        Thread producer = new Thread(() -> {
            try {
                for (int i = 0; i < n; i++) {
                    p.send(ps.createTextMessage(String.format("%05d-", i) + pad));
                    sent.incrementAndGet();
                    lastSend.set(System.nanoTime());
                }
            } catch (Throwable t) {
                error.set(t);
            }
        }, "flow-producer");
        producer.start();
        while (sent.get() < n && error.get() == null
                && System.nanoTime() - lastSend.get() < 1_000_000_000L) {
            Thread.sleep(10);
        }
        System.out.println("INFO the producer had sent " + sent.get() + " of " + n
                + " when the consumer started");
        Connection cc = connect();
        Session cs = cc.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = cs.createConsumer(q);
        for (int i = 0; i < n; i++) {
            String expected = String.format("%05d-", i) + pad;
            Message m = consumer.receive(receiveTimeoutMs);
            if (m == null) {
                throw fail("message " + i + " of " + n + " within " + receiveTimeoutMs + " ms",
                        expected, null);
            }
            String got = ((TextMessage) m).getText();
            if (!expected.equals(got)) {
                throw fail("message " + i + " of " + n + ", in order", expected, got);
            }
        }
        ok("all " + n + " non-persistent messages received once, in order");
        producer.join(receiveTimeoutMs);
        check("the producer finished without an error", !producer.isAlive() && error.get() == null,
                "finished", producer.isAlive() ? "still sending" : error.get());
        ok("the producer finished");
        close(cc);
        close(pc);
    }

    /**
     * ActiveMQ's client-side producer flow control: with a producer window
     * ({@code jms.producerWindowSize}, here {@code window=BYTES}, default 65536) the client
     * counts the bytes of its asynchronous sends (non-persistent ones, and every send in a
     * transaction) and blocks once the window is full, until the broker's ProducerAcks give
     * credit back. count=N (default 1000) non-persistent messages of about 1 KiB, then N
     * persistent ones in transactions of 50 (to another queue), many windows' worth each: all
     * are sent, and all arrive once, in order.
     */
    static void producerWindow() throws Exception {
        int n = (int) longOpt("count", 1000);
        int window = (int) longOpt("window", 65536);
        String pad = "w".repeat(1000);
        ActiveMQConnectionFactory f = factory(url);
        f.setProducerWindowSize(window);
        Connection pc = f.createConnection();
        OPEN.add(pc);
        pc.start();
        // A queue for each kind: ActiveMQ keeps no order between persistent and non-persistent
        // messages of one queue.
        Queue npq = queue(pc, "window.np");
        Queue txq = queue(pc, "window.tx");
        Session ps = pc.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = ps.createProducer(npq);
        p.setDeliveryMode(DeliveryMode.NON_PERSISTENT);
        for (int i = 0; i < n; i++) {
            p.send(ps.createTextMessage(String.format("np-%05d-", i) + pad));
        }
        ok(n + " non-persistent sends through a " + window + "-byte producer window");
        Session ts = pc.createSession(true, Session.SESSION_TRANSACTED);
        MessageProducer tp = ts.createProducer(txq);
        tp.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = 0; i < n; i++) {
            tp.send(ts.createTextMessage(String.format("tx-%05d-", i) + pad));
            if ((i + 1) % 50 == 0) {
                ts.commit();
            }
        }
        ts.commit();
        ok(n + " transacted persistent sends through the same window");
        Connection cc = connect();
        Session cs = cc.createSession(false, Session.AUTO_ACKNOWLEDGE);
        for (String kind : new String[] {"np", "tx"}) {
            MessageConsumer consumer = cs.createConsumer(kind.equals("np") ? npq : txq);
            for (int i = 0; i < n; i++) {
                String expected = String.format("%s-%05d-", kind, i) + pad;
                Message m = consumer.receive(receiveTimeoutMs);
                if (m == null) {
                    throw fail("message " + kind + " " + i + " within " + receiveTimeoutMs + " ms",
                            expected.substring(0, 9), null);
                }
                String got = ((TextMessage) m).getText();
                if (!expected.equals(got)) {
                    throw fail("message " + kind + " " + i + ", in order", expected.substring(0, 9),
                            got.substring(0, Math.min(9, got.length())));
                }
            }
            check("nothing more on the " + kind + " queue", consumer.receive(200) == null,
                    "null", "a message");
            consumer.close();
        }
        ok("all " + 2 * n + " messages received once, in order");
        close(cc);
        close(pc);
    }

    /**
     * Sends numbered persistent text messages ("0", "1", ... with int property n) to
     * queue=NAME through the URL (a failover: URL), each send waiting for the broker. Prints
     * {@code SENT k} after every 25 (k confirmed so far), then {@code SENT_TOTAL n}. With
     * count=N it sends exactly N; otherwise it sends until a line {@code stop} on standard input
     * (at least min=N, default 0, and at most max=N, default 1000000).
     */
    static void failoverProduce() throws Exception {
        String queueName = requiredOpt("queue");
        long count = longOpt("count", -1);
        long min = count >= 0 ? count : longOpt("min", 0);
        long max = count >= 0 ? count : longOpt("max", 1_000_000);
        AtomicBoolean stop = new AtomicBoolean(count >= 0);
        if (count < 0) {
            Thread reader = new Thread(() -> {
                try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in,
                        StandardCharsets.UTF_8))) {
                    for (String line; (line = in.readLine()) != null;) {
                        if (line.trim().equals("stop")) {
                            break;
                        }
                    }
                } catch (Exception e) {
                    // End of input: stop too.
                }
                stop.set(true);
            }, "stdin");
            reader.setDaemon(true);
            reader.start();
        }
        int transacted = (int) longOpt("transacted", 0);
        Connection c = connect();
        // An ordinary failover is the failover transport's business: the application's
        // exception listener should hear nothing of it (the test checks this line is absent).
        c.setExceptionListener(e -> System.out.println("EXCEPTION_LISTENER " + e));
        Session s = transacted > 0
                ? c.createSession(true, Session.SESSION_TRANSACTED)
                : c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p = s.createProducer(s.createQueue(queueName));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        ok("producer connected through " + url);
        long sent = 0;
        while (transacted > 0 && sent < max && (sent < min || !stop.get())) {
            long end = Math.min(max, sent + transacted);
            try {
                for (long n = sent; n < end; n++) {
                    TextMessage m = s.createTextMessage(Long.toString(n));
                    m.setLongProperty("n", n);
                    p.send(m);
                }
                s.commit();
            } catch (JMSException e) {
                // A failover during the transaction: the client cannot tell whether the broker
                // committed ("in doubt"), so the batch is sent again.
                System.out.println("IN_DOUBT_PRODUCE " + sent + " " + (end - 1) + " " + e);
                try {
                    s.rollback();
                } catch (JMSException r) {
                    System.out.println("rollback: " + r);
                }
                continue;
            }
            for (long n = sent; n < end; n++) {
                if ((n + 1) % 25 == 0) {
                    System.out.println("SENT " + (n + 1));
                }
            }
            sent = end;
        }
        while (transacted == 0 && sent < max && (sent < min || !stop.get())) {
            TextMessage m = s.createTextMessage(Long.toString(sent));
            m.setLongProperty("n", sent);
            p.send(m);
            sent++;
            if (sent % 25 == 0) {
                System.out.println("SENT " + sent);
            }
        }
        System.out.println("SENT_TOTAL " + sent);
        close(c);
        ok("sent " + sent + " persistent messages to " + queueName);
    }

    /**
     * Receives (auto-ack) numbered messages from queue=NAME through the URL until it has seen
     * every number 0..count-1 (count=N, or a line {@code expect N} on standard input), then
     * sends itself a sentinel and receives up to it, so that duplicates still queued show up.
     * Prints {@code RECEIVED k} every 25, {@code DUPLICATE n (redelivered=..)},
     * {@code MISSING ...} and {@code RESULT expected=.. received=.. distinct=.. duplicates=..
     * missing=.. unexpected=..}; passes only if every number arrived exactly once. Gives up
     * (and reports) when the watchdog's time is nearly up.
     */
    static void failoverConsume() throws Exception {
        String queueName = requiredOpt("queue");
        AtomicLong expected = new AtomicLong(longOpt("count", -1));
        if (expected.get() < 0) {
            Thread reader = new Thread(() -> {
                try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in,
                        StandardCharsets.UTF_8))) {
                    for (String line; (line = in.readLine()) != null;) {
                        line = line.trim();
                        if (line.startsWith("expect ")) {
                            expected.set(Long.parseLong(line.substring(7).trim()));
                        }
                    }
                } catch (Exception e) {
                    System.out.println("stdin: " + e);
                }
            }, "stdin");
            reader.setDaemon(true);
            reader.start();
        }
        long giveUpAt = System.currentTimeMillis()
                + Math.max(10_000, longOpt("timeout", 60) * 1000 - 15_000);
        int transacted = (int) longOpt("transacted", 0);
        Connection c = connect();
        // An ordinary failover is the failover transport's business: the application's
        // exception listener should hear nothing of it (the test checks this line is absent).
        c.setExceptionListener(e -> System.out.println("EXCEPTION_LISTENER " + e));
        Session s = transacted > 0
                ? c.createSession(true, Session.SESSION_TRANSACTED)
                : c.createSession(false, Session.AUTO_ACKNOWLEDGE);
        Queue q = s.createQueue(queueName);
        MessageConsumer consumer = s.createConsumer(q);
        ok("consumer connected through " + url);
        // Transacted: what the current transaction received, counted once it commits.
        List<Message> batch = new ArrayList<>();
        Set<Long> inDoubt = new HashSet<>();
        boolean idle = false;
        TreeMap<Long, Integer> seen = new TreeMap<>();
        List<String> unexpected = new ArrayList<>();
        long received = 0;
        long duplicates = 0;
        String sentinel = null;
        boolean sentinelSeen = false;
        while (!sentinelSeen) {
            long want = expected.get();
            // Transacted: a number whose consumer commit was in doubt may be gone for good.
            if (sentinel == null && want >= 0
                    && countBelow(seen, want) + missingInDoubt(seen, inDoubt, want) == want) {
                sentinel = "sentinel-" + UUID.randomUUID();
                MessageProducer p = s.createProducer(q);
                p.setDeliveryMode(DeliveryMode.PERSISTENT);
                p.send(s.createTextMessage(sentinel));
                p.close();
                if (transacted > 0) {
                    s.commit(); // sends the sentinel and settles what the batch holds
                    received += settle(batch, seen);
                }
                ok("every number 0.." + (want - 1) + " seen; sent the sentinel");
            }
            if (transacted > 0 && (batch.size() >= transacted || (idle && !batch.isEmpty()))) {
                try {
                    s.commit();
                    long before = received;
                    received += settle(batch, seen);
                    if (received / 25 != before / 25) {
                        System.out.println("RECEIVED " + received);
                    }
                } catch (JMSException e) {
                    StringBuilder numbers = new StringBuilder();
                    for (Message m : batch) {
                        String text = ((TextMessage) m).getText();
                        numbers.append(' ').append(text);
                        inDoubt.add(Long.parseLong(text));
                    }
                    // In doubt: the broker may have committed (then these are gone) or not
                    // (then they come again).
                    System.out.println("IN_DOUBT_CONSUME" + numbers + " " + e);
                    batch.clear();
                    try {
                        s.rollback();
                    } catch (JMSException r) {
                        System.out.println("rollback: " + r);
                    }
                }
                continue;
            }
            if (System.currentTimeMillis() > giveUpAt) {
                System.out.println("gave up waiting (expected=" + want + ", sentinel "
                        + (sentinel == null ? "not sent" : "not received") + ")");
                break;
            }
            Message m = consumer.receive(1000);
            idle = m == null;
            if (m == null) {
                continue;
            }
            String body = m instanceof TextMessage
                    ? ((TextMessage) m).getText()
                    : String.valueOf(m);
            if (body.equals(sentinel)) {
                sentinelSeen = true;
                break;
            }
            if (transacted > 0) {
                batch.add(m);
                continue;
            }
            long n;
            try {
                n = Long.parseLong(body);
            } catch (NumberFormatException e) {
                unexpected.add(body);
                continue;
            }
            received++;
            int times = seen.merge(n, 1, Integer::sum);
            if (times > 1) {
                duplicates++;
                if (duplicates <= 50) {
                    System.out.println("DUPLICATE " + n + " (redelivered=" + m.getJMSRedelivered()
                            + ", id " + m.getJMSMessageID() + ")");
                }
            }
            if (received % 25 == 0) {
                System.out.println("RECEIVED " + received);
            }
        }
        long want = expected.get();
        List<Long> missing = new ArrayList<>();
        for (long i = 0; i < Math.max(want, 0); i++) {
            if (!seen.containsKey(i)) {
                missing.add(i);
            }
        }
        for (Long n : new TreeSet<>(seen.keySet())) {
            if (want >= 0 && n >= want) {
                unexpected.add(Long.toString(n));
            }
        }
        if (!missing.isEmpty()) {
            System.out.println("MISSING " + missing.subList(0, Math.min(missing.size(), 100))
                    + (missing.size() > 100 ? " ..." : ""));
        }
        if (!unexpected.isEmpty()) {
            System.out.println("UNEXPECTED "
                    + unexpected.subList(0, Math.min(unexpected.size(), 100)));
        }
        if (transacted > 0) {
            // Counted at each commit, not at each receive.
            duplicates = seen.values().stream().filter(k -> k > 1).count();
        }
        System.out.println("RESULT expected=" + want + " received=" + received + " distinct="
                + seen.size() + " duplicates=" + duplicates + " missing=" + missing.size()
                + " unexpected=" + unexpected.size() + " sentinel=" + sentinelSeen);
        if (transacted > 0) {
            // Judged by the caller, which knows the in-doubt transactions of both sides.
            for (Long n : seen.keySet()) {
                if (seen.get(n) > 1) {
                    System.out.println("DUPLICATE " + n);
                }
            }
            System.out.println("MISSING_ALL " + missing);
            check("the sentinel arrived", sentinelSeen && unexpected.isEmpty(), "sentinel",
                    "see RESULT");
            close(c);
            return;
        }
        check("every message received exactly once", want >= 0 && sentinelSeen && duplicates == 0
                && missing.isEmpty() && unexpected.isEmpty(),
                "0.." + (want - 1) + " once each", "see RESULT");
        ok("every message 0.." + (want - 1) + " received exactly once");
        close(c);
    }

    /** Counts a committed transaction's numbers into seen; returns how many. */
    static long settle(List<Message> batch, TreeMap<Long, Integer> seen) throws JMSException {
        for (Message m : batch) {
            seen.merge(Long.parseLong(((TextMessage) m).getText()), 1, Integer::sum);
        }
        long n = batch.size();
        batch.clear();
        return n;
    }

    /** How many numbers below n are unseen but were in a transaction whose commit was in doubt. */
    static long missingInDoubt(TreeMap<Long, Integer> seen, Set<Long> inDoubt, long n) {
        return inDoubt.stream().filter(k -> k < n && !seen.containsKey(k)).count();
    }

    static long countBelow(TreeMap<Long, Integer> seen, long n) {
        return seen.headMap(n).size();
    }
}
