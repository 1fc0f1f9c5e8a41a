// Marshals one command of each kind whose fields changed between OpenWire versions 1 and 6,
// with every field set, using ActiveMQ 5.17.2's own marshallers (Debian's libactivemq-java:
// activemq-client.jar has openwire/v1 and v9..v12, activemq-openwire-legacy.jar v2..v8).
// Prints `OFFLINE old-<Type>-v<N> <hex>` lines for capture_5_17_2.txt. Regenerated with:
//   javac -cp $CP -d /tmp/gen OldVersions.java
//   java -cp $CP:/tmp/gen OldVersions 1 2 3 4 5 6 >> capture_5_17_2.txt
// where CP holds activemq-client.jar, activemq-openwire-legacy.jar, geronimo-jms_1.1_spec.jar,
// hawtbuf.jar, slf4j-api.jar and slf4j-nop.jar from /usr/share/java.
import org.apache.activemq.command.*;
import org.apache.activemq.openwire.OpenWireFormat;
import org.apache.activemq.util.ByteSequence;

public class OldVersions {
    public static void main(String[] args) throws Exception {
        for (String a : args) {
            int version = Integer.parseInt(a);
            OpenWireFormat format = new OpenWireFormat(version);
            format.setTightEncodingEnabled(false);
            format.setCacheEnabled(false);
            format.setStackTraceEnabled(false);
            format.setSizePrefixDisabled(false);
            ConnectionId cid = new ConnectionId("ID:old-1");
            SessionId sid = new SessionId(cid, 1);
            ProducerId pid = new ProducerId(sid, 2);
            ConsumerId conid = new ConsumerId(sid, 3);
            ActiveMQQueue queue = new ActiveMQQueue("q");

            ConnectionInfo ci = new ConnectionInfo(cid);
            ci.setClientId("client");
            ci.setUserName("user");
            ci.setPassword("pw");
            ci.setClientMaster(true);
            ci.setFaultTolerant(true);
            ci.setFailoverReconnect(true);
            ci.setCommandId(1);
            ci.setResponseRequired(true);
            print(format, version, "ConnectionInfo", ci);

            ProducerInfo pi = new ProducerInfo(pid);
            pi.setDestination(queue);
            pi.setDispatchAsync(true);
            pi.setWindowSize(1024);
            pi.setCommandId(2);
            print(format, version, "ProducerInfo", pi);

            ConsumerInfo coni = new ConsumerInfo(conid);
            coni.setDestination(queue);
            coni.setPrefetchSize(7);
            coni.setSelector("a = 1");
            coni.setNetworkConsumerPath(new ConsumerId[] {conid});
            coni.setCommandId(3);
            print(format, version, "ConsumerInfo", coni);

            ActiveMQTextMessage m = new ActiveMQTextMessage();
            m.setProducerId(pid);
            m.setDestination(queue);
            m.setMessageId(new MessageId(pid, 5));
            m.setPersistent(true);
            m.setCorrelationId("corr");
            m.setTimestamp(1700000000000L);
            m.setContent(new ByteSequence(new byte[] {0, 0, 0, 2, 104, 105}));
            m.setDroppable(true);
            m.setCluster(new BrokerId[] {new BrokerId("b")});
            m.setBrokerInTime(11);
            m.setBrokerOutTime(12);
            m.setCommandId(4);
            m.setResponseRequired(true);
            print(format, version, "ActiveMQTextMessage", m);

            RemoveInfo ri = new RemoveInfo(conid);
            ri.setLastDeliveredSequenceId(42);
            ri.setCommandId(5);
            print(format, version, "RemoveInfo", ri);

            ConsumerControl cc = new ConsumerControl();
            cc.setConsumerId(conid);
            cc.setDestination(queue);
            cc.setPrefetch(9);
            cc.setStart(true);
            cc.setCommandId(6);
            print(format, version, "ConsumerControl", cc);

            BrokerInfo bi = new BrokerInfo();
            bi.setBrokerId(new BrokerId("broker-id"));
            bi.setBrokerName("broker");
            bi.setBrokerURL("tcp://x:1");
            bi.setConnectionId(77);
            bi.setNetworkConnection(true);
            bi.setBrokerUploadUrl("http://u");
            print(format, version, "BrokerInfo", bi);

            if (version >= 2) {
                MessagePull mp = new MessagePull();
                mp.setConsumerId(conid);
                mp.setDestination(queue);
                mp.setTimeout(500);
                mp.setCorrelationId("pull");
                mp.setCommandId(7);
                print(format, version, "MessagePull", mp);
            }
        }
    }

    static void print(OpenWireFormat format, int version, String label, Object command) throws Exception {
        ByteSequence bytes = format.marshal(command);
        StringBuilder hex = new StringBuilder();
        for (int i = bytes.getOffset(); i < bytes.getOffset() + bytes.getLength(); i++) {
            hex.append(String.format("%02x", bytes.getData()[i]));
        }
        System.out.println("OFFLINE old-" + label + "-v" + version + " " + hex);
    }
}
