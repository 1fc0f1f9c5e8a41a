import java.io.InputStream;
import java.net.URI;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.TransportConnector;
import org.apache.activemq.broker.region.policy.IndividualDeadLetterStrategy;
import org.apache.activemq.broker.region.policy.PolicyEntry;
import org.apache.activemq.broker.region.policy.PolicyMap;

/**
 * RefBroker: the reference broker for JmsCheck. Starts an embedded, stock ActiveMQ 5.x
 * {@link BrokerService} (non-persistent, no JMX, scheduler support on) with one OpenWire connector on 127.0.0.1, prints
 * {@code LISTENING tcp://127.0.0.1:PORT} once it accepts clients, and runs until its standard
 * input reaches end of file (or it is killed).
 *
 * <p>Usage: {@code java -cp CLASSES:BROKER_CLASSPATH RefBroker [PORT]} (PORT 0, the default, lets
 * the OS pick one). It exists to check that a JmsCheck scenario is right, by running it against
 * real ActiveMQ; the Rust tests run the scenarios against ferromq.
 *
 * <p>System property {@code refbroker.deadLetterStrategy}: {@code shared} (the default, ActiveMQ's
 * own default) or {@code individual}, an {@code <individualDeadLetterStrategy/>} with its default
 * prefixes in a default policy entry, so on every destination (DLQs included), as ferromq's
 * {@code dead_letter_strategy = "individual"} is. System property {@code refbroker.maxFrameSize}:
 * the connector's {@code wireFormat.maxFrameSize} in bytes.
 */
public final class RefBroker {
    public static void main(String[] args) throws Exception {
        int port = args.length > 0 ? Integer.parseInt(args[0]) : 0;
        BrokerService broker = new BrokerService();
        broker.setBrokerName("reference");
        broker.setPersistent(false);
        broker.setUseJmx(false);
        broker.setUseShutdownHook(false);
        String strategy = System.getProperty("refbroker.deadLetterStrategy", "shared");
        if (strategy.equals("individual")) {
            PolicyEntry every = new PolicyEntry();
            every.setDeadLetterStrategy(new IndividualDeadLetterStrategy());
            PolicyMap policies = new PolicyMap();
            policies.setDefaultEntry(every);
            broker.setDestinationPolicy(policies);
        } else if (!strategy.equals("shared")) {
            System.err.println("refbroker.deadLetterStrategy: expected shared or individual, got "
                    + strategy);
            System.exit(64);
        }
        // For the scheduled-delay scenario (AMQ_SCHEDULED_DELAY); the other scenarios send no
        // scheduling properties.
        broker.setSchedulerSupport(true);
        // For the oversized scenario: the connector's frame limit (ActiveMQ's
        // wireFormat.maxFrameSize), as ferromq's max_frame_size.
        String maxFrameSize = System.getProperty("refbroker.maxFrameSize", "");
        TransportConnector connector = broker.addConnector("tcp://127.0.0.1:" + port
                + (maxFrameSize.isEmpty() ? "" : "?wireFormat.maxFrameSize=" + maxFrameSize));
        broker.start();
        broker.waitUntilStarted();
        URI bound = connector.getConnectUri();
        System.out.println("LISTENING tcp://127.0.0.1:" + bound.getPort());
        System.out.flush();
        InputStream in = System.in;
        byte[] buf = new byte[256];
        while (in.read(buf) >= 0) {
            // Only end of file stops the broker.
        }
        broker.stop();
        broker.waitUntilStopped();
        System.out.println("STOPPED");
        System.out.flush();
        Runtime.getRuntime().halt(0);
    }
}
